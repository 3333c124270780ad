"""Exports for other tools: QuPath GeoJSON, top-patch CSV tables and PNG crops."""

from histokd_core.export.geojson import (
    AREA_KEY,
    SCORE_KEY,
    Annotation,
    clean_polygon,
    read_geojson,
    regions_to_annotations,
    to_feature_collection,
    with_area,
    write_geojson,
)
from histokd_core.export.tables import save_patch_crops, top_k, top_patches_table, write_top_patches_csv

__all__ = [
    "AREA_KEY",
    "SCORE_KEY",
    "Annotation",
    "clean_polygon",
    "read_geojson",
    "regions_to_annotations",
    "save_patch_crops",
    "to_feature_collection",
    "top_k",
    "top_patches_table",
    "with_area",
    "write_geojson",
    "write_top_patches_csv",
]
