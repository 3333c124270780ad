"""napari reader: a whole-slide image becomes one multiscale RGB image layer in microns."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from histokd_core.slide import Slide, looks_like_tiff, open_slide, slide_transform

SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".scn", ".bif", ".vms")

LayerData = tuple[Any, dict[str, Any], str]


def get_slide_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """Return :func:`read_slides` when every path looks like a TIFF-based slide, else ``None``.

    Files with a slide suffix that do not start with a TIFF header are left to other readers;
    empty, truncated or corrupt TIFFs are accepted here so that reading them raises a
    :class:`~histokd_core.errors.SlideError` naming the file (napari shows it).
    """
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not paths:
        return None
    for p in map(Path, paths):
        if p.suffix.lower() not in SLIDE_SUFFIXES or not p.is_file():
            return None
        if p.stat().st_size and not looks_like_tiff(p):
            return None
    return read_slides


def slide_layer_data(slide: Slide, name: str | None = None) -> LayerData:
    """``(data, kwargs, "image")`` for a slide: multiscale RGB with ``scale = (mpp, mpp)``.

    Without mpp the layer is in pixel units and ``metadata["mpp_missing"]`` is True.
    """
    levels = slide.levels
    kwargs: dict[str, Any] = {
        "name": name or slide.path.stem,
        "rgb": True,
        "multiscale": len(levels) > 1,
        "contrast_limits": [0, 255],
        "metadata": {**slide.metadata(), "histokd_kind": "slide"},
        **slide_transform(slide.mpp).as_kwargs(),
    }
    if slide.mpp is not None:
        kwargs["units"] = ("um", "um")
    data = levels if len(levels) > 1 else levels[0]
    return data, kwargs, "image"


def read_slides(path: str | list[str]) -> list[LayerData]:
    """Open each slide lazily (only visible tiles are ever decoded)."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    return [slide_layer_data(open_slide(p)) for p in paths]
