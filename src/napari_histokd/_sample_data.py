"""Sample data: a synthetic H&E slide with planted tumour and immune regions, made on first use."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from histokd_core.slide import box_world, open_slide
from histokd_core.synthetic import default_regions, write_synthetic_slide
from napari_histokd._reader import slide_layer_data

SAMPLE_SIZE_HW = (4096, 6144)
SAMPLE_MPP = 0.5
SAMPLE_SEED = 0


def cache_dir() -> Path:
    """Where generated samples live: ``$HISTOKD_CACHE``, else ``$XDG_CACHE_HOME/histokd``."""
    root = os.environ.get("HISTOKD_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "histokd"


def ensure_sample_slide(directory: Path | None = None) -> Path:
    """Path of the sample slide, generating it (a few seconds) when it is not cached yet."""
    directory = directory or cache_dir() / "samples"
    h, w = SAMPLE_SIZE_HW
    path = directory / f"synthetic_seed{SAMPLE_SEED}_{h}x{w}_v1.tif"
    if not path.is_file():
        directory.mkdir(parents=True, exist_ok=True)
        write_synthetic_slide(
            path, SAMPLE_SIZE_HW, mpp=SAMPLE_MPP, seed=SAMPLE_SEED, overwrite=True
        )
    return path


def regions_layer_data(regions, mpp: float) -> tuple[Any, dict[str, Any], str]:
    """A Shapes layer outlining planted regions (level-0 px rectangles) in microns."""
    rects = [box_world(r.x0, r.y0, r.x1, r.y1, mpp) for r in regions]
    kwargs = {
        "name": "planted regions",
        "shape_type": "rectangle",
        "edge_color": "#00ff88",
        "face_color": "transparent",
        "edge_width": 8 * mpp,
        "features": {
            "kind": [r.kind for r in regions],
            "intensity": [r.intensity for r in regions],
        },
        "text": {"string": "{kind}", "color": "#00ff88", "size": 10, "anchor": "upper_left"},
    }
    return rects, kwargs, "shapes"


def synthetic_slide() -> list[tuple[Any, dict[str, Any], str]]:
    """The sample: a 4096 x 6144 px slide at 0.5 um/px and its planted regions."""
    path = ensure_sample_slide()
    slide = open_slide(path)
    regions = default_regions(SAMPLE_SIZE_HW, SAMPLE_SEED)
    return [
        slide_layer_data(slide, name="synthetic slide"),
        regions_layer_data(regions, SAMPLE_MPP),
    ]
