"""Synthetic data: pyramidal H&E-like slides (``slides``) and cohorts built on them (``cohort``)."""

from histokd_core.synthetic.slides import (
    REGION_KINDS,
    PlantedRegion,
    SyntheticSlide,
    default_regions,
    write_synthetic_slide,
)

__all__ = [
    "REGION_KINDS",
    "PlantedRegion",
    "SyntheticSlide",
    "default_regions",
    "write_synthetic_slide",
]
