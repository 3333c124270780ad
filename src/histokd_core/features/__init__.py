"""Patch features: encoders (registry), the per-slide zarr feature store, importers and extraction.

Public API
----------
- :func:`get_encoder` -> :class:`PatchEncoder` (``id``, ``dim``, ``input_size``, ``encode``);
  :func:`register_encoder`, :func:`available_encoders`, :func:`select_device`
- :func:`write_slide_features`, :func:`open_features` -> :class:`SlideFeatures`,
  :func:`available_slide_ids`
- :func:`extract_slide` (one slide, resumable) and :func:`extract_cohort` (dask.distributed)
"""

from histokd_core.features.cohort_extract import CohortReport, extract_cohort
from histokd_core.features.encoders import (
    DEFAULT_ENCODER,
    EncoderError,
    PatchEncoder,
    TorchPatchEncoder,
    available_encoders,
    get_encoder,
    register_encoder,
    select_device,
    spec_from_id,
)
from histokd_core.features.extract import ExtractResult, ExtractStats, TileDataset, encode_tiles, extract_slide
from histokd_core.features.store import (
    MAGNIFICATIONS,
    SlideFeatures,
    available_slide_ids,
    mag_to_mpp,
    open_features,
    read_slide_attrs,
    slide_id_of,
    write_slide_features,
)

__all__ = [
    "DEFAULT_ENCODER",
    "MAGNIFICATIONS",
    "CohortReport",
    "EncoderError",
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
    "select_device",
    "slide_id_of",
    "spec_from_id",
    "write_slide_features",
]
