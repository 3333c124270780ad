"""Patch features: encoders (registry), the per-slide zarr feature store, importers and extraction.

Modules, lowest first: :mod:`.base` (the :class:`PatchEncoder` interface and torch inference),
the encoders (:mod:`.efficientnet`, :mod:`.hed`, :mod:`.foundation`), :mod:`.encoders` (the spec
registry); :mod:`.slide_features` (:class:`SlideFeatures`, one slide's features), :mod:`.importers`
(CLAM/TRIDENT files) and :mod:`.store` (the zarr store); :mod:`.extract` (one slide) and
:mod:`.cohort_extract` (dask.distributed).

Public API
----------
- :func:`get_encoder` -> :class:`PatchEncoder` (``id``, ``dim``, ``input_size``, ``encode``);
  :func:`register_encoder`, :func:`available_encoders`
- :func:`write_slide_features`, :func:`open_features` -> :class:`SlideFeatures`,
  :func:`available_slide_ids`
- :func:`extract_slide` (one slide, resumable) and :func:`extract_cohort` (dask.distributed)
"""

from histokd_core.features.base import PatchEncoder, TorchPatchEncoder
from histokd_core.features.cohort_extract import CohortReport, extract_cohort
from histokd_core.features.encoders import (
    DEFAULT_ENCODER,
    available_encoders,
    get_encoder,
    register_encoder,
    spec_from_id,
)
from histokd_core.features.extract import (
    ExtractResult,
    ExtractStats,
    TileDataset,
    encode_tiles,
    extract_slide,
)
from histokd_core.features.slide_features import (
    MAGNIFICATIONS,
    SlideFeatures,
    mag_to_mpp,
    slide_id_of,
)
from histokd_core.features.store import (
    available_slide_ids,
    open_features,
    read_slide_attrs,
    write_slide_features,
)

__all__ = [
    "DEFAULT_ENCODER",
    "MAGNIFICATIONS",
    "CohortReport",
    "ExtractResult",
    "ExtractStats",
    "PatchEncoder",
    "SlideFeatures",
    "TileDataset",
    "TorchPatchEncoder",
    "available_encoders",
    "available_slide_ids",
    "encode_tiles",
    "extract_cohort",
    "extract_slide",
    "get_encoder",
    "mag_to_mpp",
    "open_features",
    "read_slide_attrs",
    "register_encoder",
    "slide_id_of",
    "spec_from_id",
    "write_slide_features",
]
