"""napari Shapes <-> QuPath GeoJSON: +0.5 px convention, scale to level-0 px, round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
from shapely.geometry import box

from histokd_core.errors import HistoKDError
from histokd_core.export import read_geojson
from histokd_core.slide import box_world, qupath_to_world, world_to_qupath
from napari_histokd._geojson import (
    annotations_to_shapes,
    get_geojson_reader,
    shapes_to_annotations,
    write_shapes,
)

MPP = 0.25


def test_pixel_centre_to_corner_convention():
    # napari world (y, x) of level-0 pixel centre (x=10, y=20) at 0.25 um/px
    q = world_to_qupath(np.array([[20 * MPP, 10 * MPP]]), MPP)
    np.testing.assert_allclose(q, [[10.5, 20.5]])
    np.testing.assert_allclose(qupath_to_world(q, MPP), [[20 * MPP, 10 * MPP]])


def test_writer_uses_layer_transform_and_refuses_overwrite(tmp_path):
    # a rectangle around level-0 pixels x 100..199, y 40..79, drawn in world microns
    rect = box_world(100, 40, 200, 80, MPP)
    # the same rectangle in a layer with its own scale/translate (data units differ)
    data = (rect - [1.0, 2.0]) / 2.0
    attrs = {"scale": (2.0, 2.0), "translate": (1.0, 2.0), "shape_type": ["rectangle"], "name": "tumour",
             "edge_color": np.array([[1.0, 0.0, 0.0, 1.0]]), "metadata": {"histokd_mpp": MPP},
             "features": {"classification": ["Tumor"]}}
    (path,) = write_shapes(str(tmp_path / "a"), [data], attrs)
    assert path.endswith("a.geojson")
    (a,) = read_geojson(path)
    assert a.geometry.equals(box(100, 40, 200, 80))
    assert a.classification == "Tumor" and a.color == (255, 0, 0)
    assert a.measurements["Area µm^2"] == pytest.approx(100 * 40 * MPP**2)
    with pytest.raises(HistoKDError, match="refusing to overwrite"):
        write_shapes(path, [data], attrs)


def test_lines_are_skipped_and_ellipses_become_polygons():
    attrs = {"shape_type": ["path", "ellipse"]}
    ell = np.array([[0, 0], [0, 20], [10, 20], [10, 0]], dtype=float)
    (a,) = shapes_to_annotations([np.zeros((3, 2)), ell], attrs, 1.0, physical=False)
    assert a.geometry.area == pytest.approx(np.pi * 10 * 5, rel=0.01)
    assert "Area µm^2" not in a.measurements  # a slide in pixels has no physical area
    (b,) = shapes_to_annotations([ell], {"shape_type": ["ellipse"]}, 1.0)  # a slide at 1.0 um/px
    assert b.measurements["Area µm^2"] == pytest.approx(np.pi * 10 * 5, rel=0.01)


@pytest.mark.gui
def test_round_trip_through_the_viewer(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    slide = viewer.add_image(np.zeros((400, 600, 3), np.uint8), rgb=True, scale=(MPP, MPP),
                             metadata={"histokd_kind": "slide", "mpp": MPP})
    polys = [box_world(100, 40, 200, 80, MPP),
             np.array([[10.0, 10.0], [10.0, 60.0], [50.0, 35.0]])]  # a triangle in um
    shapes = viewer.add_shapes(polys, shape_type=["rectangle", "polygon"], name="drawn",
                               edge_color="red", features={"classification": ["Tumor", "Stroma"]})
    data, attrs, _ = shapes.as_layer_data_tuple()
    (path,) = write_shapes(str(tmp_path / "drawn.geojson"), data, attrs)  # mpp from the slide layer
    fc = json.loads(open(path).read())
    assert fc["features"][0]["properties"]["classification"]["name"] == "Tumor"
    assert get_geojson_reader(path) is not None and get_geojson_reader(str(tmp_path)) is None
    layers = get_geojson_reader(path)(path)
    (back_data, back_kwargs, kind), = layers
    back = viewer.add_shapes(back_data, **back_kwargs)
    assert kind == "shapes" and back.scale.tolist() == slide.scale.tolist()
    for orig, new in zip(polys, back.data):
        world = np.asarray(new) * back.scale + back.translate
        # same vertex set (ring start and orientation may differ)
        assert sorted(map(tuple, np.round(world, 6))) == sorted(map(tuple, np.round(orig, 6)))
    assert list(back.features["classification"]) == ["Tumor", "Stroma"]
    # writing the read layer again gives the same polygons and ids
    data2, attrs2, _ = back.as_layer_data_tuple()
    (path2,) = write_shapes(str(tmp_path / "again.geojson"), data2, attrs2)
    a1, a2 = read_geojson(path), read_geojson(path2)
    assert [a.id for a in a1] == [a.id for a in a2]
    for x, y in zip(a1, a2):
        assert x.geometry.equals_exact(y.geometry, 1e-6) or x.geometry.equals(y.geometry)


def test_annotations_to_shapes_drops_holes_with_a_warning(caplog):
    from shapely.geometry import Polygon

    from histokd_core.export import Annotation

    poly = Polygon([(0, 0), (10, 0), (10, 10), (0, 10)], [[(4, 4), (6, 4), (6, 6), (4, 6)]])
    data, kwargs, kind = annotations_to_shapes([Annotation(poly, "T", (1, 2, 3))], mpp=0.5)
    assert len(data) == 1 and len(data[0]) == 4 and "hole" in caplog.text
    assert kwargs["scale"] == (0.5, 0.5)
