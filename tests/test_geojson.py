"""QuPath GeoJSON: layout of written files, round trip, older QuPath fields, errors."""

import json

import numpy as np
import pytest
from shapely.geometry import Polygon, box

from histokd_core.errors import DataError, HistoKDError
from histokd_core.explain import rasterize, threshold_regions
from histokd_core.export import AREA_KEY, SCORE_KEY, Annotation, read_geojson, regions_to_annotations, write_geojson


def test_written_layout_is_qupath_04(tmp_path):
    a = Annotation(box(10, 20, 110, 70), classification="Tumor", color=(200, 0, 0), name="r1",
                   measurements={"Mean score": 0.8, "bad": float("nan")})
    path = write_geojson(tmp_path / "a.geojson", [a])
    fc = json.loads(path.read_text())
    assert fc["type"] == "FeatureCollection"
    (f,) = fc["features"]
    assert f["type"] == "Feature" and len(f["id"]) == 36  # UUID
    p = f["properties"]
    assert p["objectType"] == "annotation" and p["name"] == "r1"
    assert p["classification"] == {"name": "Tumor", "color": [200, 0, 0]}
    assert p["measurements"] == {"Mean score": 0.8}  # NaN dropped
    ring = f["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1]  # closed
    assert Polygon(ring).exterior.is_ccw  # RFC 7946 orientation
    assert {tuple(v) for v in ring} == {(10, 20), (110, 20), (110, 70), (10, 70)}


def test_round_trip_and_refusal_to_overwrite(tmp_path):
    hole = Polygon([(0, 0), (100, 0), (100, 100), (0, 100)], [[(40, 40), (60, 40), (60, 60), (40, 60)]])
    anns = [Annotation(hole, "Stroma", (0, 200, 0), measurements={"x": 1.5}),
            Annotation(box(200, 0, 300.25, 50.5), None)]
    path = write_geojson(tmp_path / "b.geojson", anns)
    back = read_geojson(path)
    assert len(back) == 2
    for a, b in zip(anns, back):
        assert b.geometry.equals(a.geometry)
        assert (b.classification, b.color, b.measurements, b.id) == (a.classification, a.color, a.measurements, a.id)
    assert back[0].geometry.area == pytest.approx(100 * 100 - 20 * 20)
    with pytest.raises(HistoKDError, match="refusing to overwrite"):
        write_geojson(path, anns)
    write_geojson(path, anns[:1], overwrite=True)
    assert len(read_geojson(path)) == 1


def test_self_intersecting_polygon_is_made_valid(tmp_path):
    bowtie = Polygon([(0, 0), (10, 10), (10, 0), (0, 10)])
    path = write_geojson(tmp_path / "c.geojson", [Annotation(bowtie)])
    (a,) = read_geojson(path)
    assert a.geometry.is_valid and a.geometry.area == pytest.approx(50)


def test_reads_older_qupath_fields(tmp_path):
    features = [  # QuPath 0.2/0.3 layout, a bare list, as QuPath also writes
        {"type": "Feature", "id": "PathAnnotationObject",
         "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]]},
         "properties": {"object_type": "detection", "isLocked": False,
                        "classification": {"name": "Tumor", "colorRGB": -3670016},
                        "measurements": [{"name": "Area", "value": 100}, {"name": "Score", "value": 0.5}]}},
        {"type": "Feature",
         "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [5, 0], [5, 5], [0, 5], [0, 0]]]},
         "properties": {"classification": {"names": ["Tumor", "Positive"], "color": [1, 2, 3]}}},
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]}, "properties": {}},
    ]
    path = tmp_path / "old.json"
    path.write_text(json.dumps(features))
    a, b = read_geojson(path)  # the Point is skipped
    assert a.object_type == "detection" and a.classification == "Tumor"
    assert a.color == (200, 0, 0)  # -3670016 = 0xFFC80000 (ARGB)
    assert a.measurements == {"Area": 100.0, "Score": 0.5}
    assert b.classification == "Tumor: Positive" and b.color == (1, 2, 3) and b.object_type == "annotation"


@pytest.mark.parametrize(
    "text, match",
    [("{not json", "not valid JSON"), ('{"type": "Polygon"}', "FeatureCollection"),
     ('{"type": "FeatureCollection", "features": [{"type": "Feature"}]}', "geometry"),
     ('[{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]},'
      '"properties": {"measurements": [{"x": 1}]}}]', "measurements")],
)
def test_bad_files_name_the_problem(tmp_path, text, match):
    path = tmp_path / "bad.geojson"
    path.write_text(text)
    with pytest.raises(DataError, match=match) as err:
        read_geojson(path)
    assert "bad.geojson" in str(err.value)


def test_regions_export_with_score_and_area(tmp_path):
    coords = np.array([[0, 0], [256, 0], [512, 0]])
    raster = rasterize(coords, [0.9, 0.8, 0.1], 256)
    anns = regions_to_annotations(threshold_regions(raster, 0.5), mpp=0.5, classification="High attention")
    path = write_geojson(tmp_path / "r.geojson", anns)
    (a,) = read_geojson(path)
    assert a.geometry.equals(box(0, 0, 512, 256))
    assert a.measurements[SCORE_KEY] == pytest.approx(0.85)
    assert a.measurements[AREA_KEY] == pytest.approx(512 * 256 * 0.25)
