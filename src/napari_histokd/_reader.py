"""napari reader: a whole-slide image becomes one multiscale RGB image layer in microns.

Accepts TIFF-based slides (tiffslide), OpenSlide-only formats (MIRAX ``.mrxs``, Hamamatsu
``.vms``/``.vmu``, Sakura ``.svslide``) and DICOM WSI (a dropped folder of instances, or one
``.dcm`` of it; wsidicom). The backend is chosen by :func:`histokd_core.slide.open_slide`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from histokd_core.slide import Slide, looks_like_tiff, open_slide, slide_transform
from histokd_core.slide.backends import OPENSLIDE_SUFFIXES, dicom_files, is_dicom_file

#: TIFF-based slide suffixes (tiffslide, or OpenSlide for Ventana BIF and Philips TIFF).
TIFF_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".scn", ".bif")
SLIDE_SUFFIXES = TIFF_SUFFIXES + OPENSLIDE_SUFFIXES + (".dcm",)

LayerData = tuple[Any, dict[str, Any], str]

#: appended to the name of a slide layer whose file has no microns per pixel.
NO_MPP_SUFFIX = " [no mpp: pixels]"


def get_slide_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """Return :func:`read_slides` when every path looks like a slide we read, else ``None``.

    Files with a TIFF suffix that do not start with a TIFF header, ``.dcm`` files without the
    DICOM preamble and folders without DICOM files are left to other readers; empty, truncated
    or corrupt slides are accepted here so that reading them raises a
    :class:`~histokd_core.errors.SlideError` naming the file (napari shows it).
    """
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not paths:
        return None
    return read_slides if all(_claims(Path(p)) for p in paths) else None


def _claims(p: Path) -> bool:
    if p.is_dir():
        return bool(dicom_files(p))
    suffix = p.suffix.lower()
    if suffix not in SLIDE_SUFFIXES or not p.is_file():
        return False
    if suffix == ".dcm":
        return is_dicom_file(p)
    if suffix in TIFF_SUFFIXES:
        return not p.stat().st_size or looks_like_tiff(p)
    return True


def slide_layer_data(slide: Slide, name: str | None = None) -> LayerData:
    """``(data, kwargs, "image")`` for a slide: multiscale RGB with ``scale = (mpp, mpp)``.

    Without mpp the layer is in pixel units, ``metadata["mpp_missing"]`` is True and the name
    ends with :data:`NO_MPP_SUFFIX` (the docks ask for the mpp and drop the suffix once given).
    """
    levels = slide.display_levels
    name = name or (slide.path.name if slide.path.is_dir() else slide.path.stem)
    if slide.mpp is None:
        name += NO_MPP_SUFFIX
    kwargs: dict[str, Any] = {
        "name": name,
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
