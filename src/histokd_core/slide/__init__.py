"""Whole-slide access: lazy dask pyramids, tissue masks, patch grids, napari geometry.

Public API
----------
- :func:`open_slide` -> :class:`Slide` (levels, mpp, read_region, thumbnail, require_mpp, metadata)
- :func:`tissue_mask` -> :class:`TissueMask`
- :func:`patch_grid` -> :class:`PatchGrid` (``save``/``load`` as CSV or npz)
- :mod:`histokd_core.slide.geometry`: napari scale/translate for slides, levels and patch grids
"""

from histokd_core.slide.geometry import (
    Transform,
    box_world,
    grid_transform,
    infer_stride,
    level_transform,
    patch_centres_world,
    patch_rectangles_world,
    qupath_to_world,
    slide_transform,
    world_to_level0,
    world_to_qupath,
)
from histokd_core.slide.grid import PatchGrid, lattice, patch_grid
from histokd_core.slide.reader import MissingMppWarning, Slide, looks_like_tiff, open_slide
from histokd_core.slide.tissue import TissueMask, saturation_mask, tissue_mask

__all__ = [
    "MissingMppWarning",
    "PatchGrid",
    "Slide",
    "TissueMask",
    "Transform",
    "box_world",
    "grid_transform",
    "infer_stride",
    "lattice",
    "level_transform",
    "looks_like_tiff",
    "open_slide",
    "patch_centres_world",
    "patch_grid",
    "patch_rectangles_world",
    "qupath_to_world",
    "saturation_mask",
    "slide_transform",
    "tissue_mask",
    "world_to_level0",
    "world_to_qupath",
]
