"""Synthetic data: pyramidal H&E-like slides (``slides``) and cohorts built on them (``cohort``)."""

from histokd_core.synthetic.cohort import (
    FeatureCohort,
    SignalKnobs,
    SyntheticCohort,
    make_feature_cohort,
    make_synthetic_cohort,
    slide_oracle_features,
)
from histokd_core.synthetic.slides import (
    REGION_KINDS,
    PlantedRegion,
    SyntheticSlide,
    default_regions,
    write_synthetic_slide,
)

__all__ = [
    "FeatureCohort",
    "SignalKnobs",
    "SyntheticCohort",
    "make_feature_cohort",
    "make_synthetic_cohort",
    "slide_oracle_features",
    "REGION_KINDS",
    "PlantedRegion",
    "SyntheticSlide",
    "default_regions",
    "write_synthetic_slide",
]
