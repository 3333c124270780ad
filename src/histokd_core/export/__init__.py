"""Exports for other tools: QuPath GeoJSON (annotations, per-patch detections), top-patch CSV
tables and PNG crops."""

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
from histokd_core.export.qupath import (
    PatchClasses,
    PatchObjects,
    detection_features,
    read_annotations,
    read_detections,
    write_detections,
)
from histokd_core.export.tables import save_patch_crops, top_k, top_patches_table, write_top_patches_csv

__all__ = [
    "AREA_KEY",
    "SCORE_KEY",
    "Annotation",
    "PatchClasses",
    "PatchObjects",
    "clean_polygon",
    "detection_features",
    "read_annotations",
    "read_detections",
    "read_geojson",
    "regions_to_annotations",
    "save_patch_crops",
    "to_feature_collection",
    "top_k",
    "top_patches_table",
    "with_area",
    "write_detections",
    "write_geojson",
    "write_top_patches_csv",
]
