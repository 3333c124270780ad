"""Export dock: a heatmap's patches as QuPath detections, QuPath annotations back onto the slide."""

from __future__ import annotations

import json

import numpy as np
import pytest

from histokd_core.methods.base import Explanation

pytestmark = pytest.mark.gui

MPP = 0.5


def test_export_dock_writes_detections_and_imports_annotations(make_napari_viewer, tmp_path):
    from napari_histokd._widgets.export import ExportWidget

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((64, 96), np.uint8), scale=(MPP, MPP), name="slide",
                     metadata={"histokd_kind": "slide"})
    coords = np.array([[0, 0], [256, 0], [512, 256]])
    expl = Explanation(coords=coords, patch_size=256, attention=np.array([0.5, 0.3, 0.2]),
                       clusters={"tumor": np.array([0, 1, -1])})
    viewer.add_image(np.zeros((2, 3)), name="attention",
                     metadata={"histokd_kind": "attention", "explanation": expl})
    w = ExportWidget(viewer)
    w.heatmap.setCurrentText("attention")
    out = tmp_path / "patches.geojson"
    w.out.setText(str(out))
    assert w.export_detections() == out
    feats = json.loads(out.read_text(encoding="utf-8"))["features"]
    assert [f["geometry"]["coordinates"][0][0] for f in feats] == coords.tolist()
    assert [f["properties"]["measurements"]["attention"] for f in feats] == [0.5, 0.3, 0.2]
    assert feats[0]["properties"]["classification"]["name"] == "tumor cluster 0"
    assert len(feats[0]["properties"]["classification"]["color"]) == 3

    qp = tmp_path / "qupath.geojson"
    qp.write_text(json.dumps([
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [
            [[100, 100], [400, 100], [400, 300], [100, 300], [100, 100]]]},
         "properties": {"objectType": "annotation", "classification": {"name": "Tumor", "color": [200, 0, 0]}}},
        *feats,  # detections in the same file are not imported as shapes
    ]), encoding="utf-8")
    layer = w.import_annotations(str(qp))
    assert len(layer.data) == 1 and tuple(layer.scale) == (MPP, MPP)
    # QuPath's corner origin -> napari pixel centres: level-0 (x, y) = data (y, x) + 0.5
    ys, xs = np.asarray(layer.data[0]).T + 0.5
    assert sorted(set(xs.tolist())) == [100.0, 400.0] and sorted(set(ys.tolist())) == [100.0, 300.0]
    assert layer.features["classification"].tolist() == ["Tumor"]
