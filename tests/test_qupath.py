"""Heatmaps as QuPath detections (schema, coordinates, classes) and QuPath objects read back."""

from __future__ import annotations

import json

import numpy as np
import pytest
from shapely.geometry import shape

from histokd_core.errors import DataError, HistoKDError
from histokd_core.explain.labels import label_color
from histokd_core.export import (
    PatchClasses,
    detection_features,
    read_annotations,
    read_detections,
    write_detections,
)

COORDS = np.array([[0, 0], [256, 0], [512, 128]])


def test_detections_follow_qupath_conventions(tmp_path):
    path = write_detections(
        tmp_path / "maps.geojson", COORDS, 256,
        {"attention": [0.5, 0.25, 0.25], "pathway:HYPOXIA": [1.0, np.nan, -2.0]},
        classes=PatchClasses(np.array([0, 2, -1]), names={0: "tumour"}, prefix="tumor cluster",
                             colors={0: label_color(0), 2: label_color(2)}),
    )
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["type"] == "FeatureCollection" and len(data["features"]) == 3
    f0, f1, f2 = data["features"]
    for f, (x, y) in zip(data["features"], COORDS.tolist()):
        assert f["type"] == "Feature" and isinstance(f["id"], str) and len(f["id"]) == 36
        assert f["properties"]["objectType"] == "detection"
        ring = f["geometry"]["coordinates"][0]
        assert f["geometry"]["type"] == "Polygon"
        # level-0 square from the patch's top-left corner (QuPath's corner origin), closed, CCW
        assert ring == [[x, y], [x + 256, y], [x + 256, y + 256], [x, y + 256], [x, y]]
        poly = shape(f["geometry"])
        assert poly.is_valid and poly.exterior.is_ccw and poly.area == 256 * 256
    # measurements are a name -> number map (QuPath >= 0.4); NaN left out
    assert f0["properties"]["measurements"] == {"attention": 0.5, "pathway:HYPOXIA": 1.0}
    assert f1["properties"]["measurements"] == {"attention": 0.25}
    # classification {name, color [r, g, b]}; the viewer's colours; -1 has no class
    assert f0["properties"]["classification"] == {"name": "tumour", "color": list(label_color(0))}
    assert f1["properties"]["classification"] == {"name": "tumor cluster 2", "color": list(label_color(2))}
    assert "classification" not in f2["properties"]


def test_detections_round_trip(tmp_path):
    values = np.array([0.125, 0.5, 0.375])
    path = write_detections(tmp_path / "d.geojson", COORDS, 256, {"attention": values},
                            classes=PatchClasses(np.array([1, 1, 0]), colors={0: (1, 2, 3)}))
    back = read_detections(path)
    np.testing.assert_array_equal(back.coords, COORDS)
    assert back.patch_size == 256
    np.testing.assert_allclose(back.measurements["attention"], values)
    assert back.classification == ["cluster 1", "cluster 1", "cluster 0"]
    assert back.colors == {"cluster 0": (1, 2, 3)}  # cluster 1 was given no colour
    assert read_annotations(path) == []  # detections are not annotations


def test_detection_errors_name_the_field(tmp_path):
    with pytest.raises(DataError, match="measurement 'attention'"):
        detection_features(COORDS, 256, {"attention": [1.0]})
    with pytest.raises(DataError, match="classes"):
        detection_features(COORDS, 256, {}, classes=PatchClasses(np.array([0])))
    with pytest.raises(DataError, match="patch_size"):
        detection_features(COORDS, 0, {})
    with pytest.raises(DataError, match="coords"):
        detection_features(np.zeros((3, 3)), 256, {})
    write_detections(tmp_path / "x.geojson", COORDS, 256, {})
    with pytest.raises(HistoKDError, match="already exists"):
        write_detections(tmp_path / "x.geojson", COORDS, 256, {})


def test_read_annotations_from_a_qupath_export(tmp_path):
    """A QuPath 0.4-style export: annotations and a detection; a bare list is accepted too."""
    features = [
        {"type": "Feature", "id": "a1", "geometry": {"type": "Polygon", "coordinates": [
            [[100, 100], [400, 100], [400, 300], [100, 300], [100, 100]]]},
         "properties": {"objectType": "annotation", "name": "tumour 1",
                        "classification": {"name": "Tumor", "color": [200, 0, 0]},
                        "measurements": {"Area µm^2": 15000.0}}},
        {"type": "Feature", "id": "d1", "geometry": {"type": "Polygon", "coordinates": [
            [[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]]},
         "properties": {"objectType": "detection"}},
    ]
    for data in ({"type": "FeatureCollection", "features": features}, features):
        path = tmp_path / "qp.geojson"
        path.write_text(json.dumps(data), encoding="utf-8")
        anns = read_annotations(path)
        assert len(anns) == 1
        a = anns[0]
        assert a.classification == "Tumor" and a.color == (200, 0, 0) and a.name == "tumour 1"
        assert a.geometry.bounds == (100.0, 100.0, 400.0, 300.0)
        assert a.measurements == {"Area µm^2": 15000.0}
    assert read_detections(path).patch_size == 10
    path.write_text(json.dumps(features[:1]), encoding="utf-8")
    with pytest.raises(DataError, match="no detection"):
        read_detections(path)
