"""mpp everywhere a slide enters (issue 15, point 1), on the real TCGA frozen slide (no mpp in
its file): the reader shows it is missing, both docks take it (prefilled, required, hinted), the
slide and its overlays then carry microns, and every piece of advice in the error works."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from histokd_core.errors import MissingMppError
from histokd_core.slide import open_slide

TCGA = "TCGA-CR-7395-01A-01-TS1.svs"
W, H = 4443, 3567


@pytest.fixture()
def tcga(shared_data):
    return shared_data / "slides" / TCGA


def test_the_error_advice_works(tcga, tmp_path, capsys):
    """Each fix the message names: open_slide(mpp=...), `histokd extract --mpp`, the docks' field
    (tested below), analyse_slide(mpp=...) (tested with the Analyse dock)."""
    from histokd_core.cli import main

    with pytest.warns(UserWarning), open_slide(tcga) as slide:
        with pytest.raises(MissingMppError) as err:
            slide.require_mpp()
    msg = str(err.value)
    assert "'slide um/px' field of the napari Analyse or Patch-grid dock" in msg
    assert f"histokd extract {TCGA} --mpp 0.25" in msg and "open_slide(path, mpp=0.25)" in msg
    with open_slide(tcga, mpp=0.25) as slide:
        assert slide.require_mpp() == 0.25
    out = tmp_path / "f"
    code = main(["extract", str(tcga), "--out", str(out), "--mpp", "0.5", "--encoder", "hed-texture",
                 "--magnifications", "20x", "--workers", "1", "--loader-workers", "0"])
    assert code == 0, capsys.readouterr()
    from histokd_core.features import open_features

    sf = open_features(out, TCGA)
    assert sf.attrs["mpp"] == 0.5 and len(sf.coords("20x")) > 0


@pytest.mark.gui
def test_patch_grid_dock_takes_the_mpp_of_a_slide_without_one(make_napari_viewer, qtbot, tcga):
    from napari_histokd._reader import NO_MPP_SUFFIX
    from napari_histokd._widgets.patch_grid import PatchGridWidget

    viewer = make_napari_viewer()
    with pytest.warns(UserWarning, match="mpp"):
        [layer] = viewer.open(str(tcga), plugin="napari-histokd")
    # the reader keeps the missing mpp visible: metadata, name and pixel units
    assert layer.metadata["mpp_missing"] and layer.scale[0] == 1.0
    assert layer.name == "TCGA-CR-7395-01A-01-TS1" + NO_MPP_SUFFIX
    widget = PatchGridWidget(viewer)
    assert widget.mpp.value() == 0.0 and widget.mpp.text() == "required"
    assert "not in the file" in widget.mpp_hint.text()
    assert widget.start() is None  # required: nothing runs
    assert "slide um/px" in widget.status.text() and "--mpp" in widget.status.text()
    assert not any(la.name.endswith("patches") for la in viewer.layers)
    widget.mpp.setValue(0.5)  # the user supplies it: now it works, in microns
    assert widget.start() is not None
    # wait for the result, not the finished signal (a worker can finish before a later waitSignal
    # connects)
    qtbot.waitUntil(lambda: f"{layer.name} patches" in viewer.layers, timeout=120_000)
    assert layer.name == "TCGA-CR-7395-01A-01-TS1" and layer.scale[-1] == 0.5
    assert str(layer.units[-1]) == "micrometer" and layer.metadata["mpp"] == 0.5
    points = viewer.layers[f"{layer.name} patches"]
    assert str(points.units[-1]) == "micrometer"
    assert 0 < points.data[:, 0].max() < H * 0.5 and points.data[:, 1].max() < W * 0.5
    assert points.size[0] == pytest.approx(128.0)  # 256 px patches at 0.5 um/px: 128 um


@pytest.mark.gui
def test_analyse_dock_on_the_real_tcga_slide_with_an_entered_mpp(make_napari_viewer, qtbot, tcga, tmp_path):
    """The Analyse dock requires the mpp, passes it to extraction, and the overlays, the slide
    and the exported regions then carry microns and areas."""
    from histokd_core.bag import Bag, DataInfo
    from histokd_core.export import read_geojson
    from histokd_core.features import get_encoder, open_features
    from histokd_core.train import TrainConfig, run_cv
    from napari_histokd._widgets.analyse import AnalyseWidget
    from napari_histokd._widgets.export import ExportWidget

    enc = get_encoder("hed-texture", device="cpu")
    info = DataInfo(task="classification", feat_dim=enc.dim, n_classes=2, encoder_id=enc.id)
    rng = np.random.default_rng(0)
    coords = torch.from_numpy(np.stack(np.meshgrid(np.arange(4) * 256, np.arange(4) * 256), -1).reshape(-1, 2))
    bags = [Bag(case_id=f"h{i}", feats=torch.from_numpy(rng.normal(size=(16, enc.dim)).astype(np.float32)),
                coords=coords, patch_size=256, label=i % 2) for i in range(8)]
    data = SimpleNamespace(n_folds=1, fold=lambda i: SimpleNamespace(
        train=bags[:4], val=bags[4:6], test=bags[6:], info=info))
    run_cv("baselines", {"models": ["abmil"]}, data, tmp_path / "run",
           TrainConfig(epochs=1, batch_size=4, seed=0, device="cpu", num_threads=1), folds=[0])

    viewer = make_napari_viewer()
    with pytest.warns(UserWarning, match="mpp"):
        [layer] = viewer.open(str(tcga), plugin="napari-histokd")
    w = AnalyseWidget(viewer)
    assert w.slide.currentText() == layer.name
    assert w.mpp.text() == "required" and "not in the file" in w.mpp_hint.text()
    assert w.extract_to.text()  # a default folder
    w.checkpoint.setText(str(tmp_path / "run" / "fold_0" / "abmil.safetensors"))
    w.extract_now.setChecked(True)
    w.extract_to.setText(str(tmp_path / "extracted"))
    w.device.setCurrentText("cpu")
    assert w.start() is None and "slide um/px" in w.status.text()
    w.mpp.setValue(0.5)
    progress = []
    w.signals.progress.connect(lambda f, m: progress.append(m))
    assert w.start() is not None
    qtbot.waitUntil(w.run_btn.isEnabled, timeout=300_000)
    assert w.analysis is not None, w.status.text()
    assert any("patches/s" in m and "left" in m for m in progress), progress[-5:]
    sf = open_features(tmp_path / "extracted", TCGA)
    assert sf.attrs["mpp"] == 0.5
    heat = w.layers["attention"]
    assert layer.scale[-1] == 0.5 and str(heat.units[-1]) == "micrometer"
    assert heat.metadata["slide_mpp"] == 0.5
    ext = np.asarray(heat.extent.world)[:, -2:]
    assert ext[1, 0] < H * 0.5 and ext[1, 1] < W * 0.5  # in microns on the slide
    # exported regions carry areas and keep the units (no "Inconsistent units")
    ex = ExportWidget(viewer)
    ex.heatmap.setCurrentText(heat.name)
    ex.set_quantile()
    ex.out.setText(str(tmp_path / "r.geojson"))
    anns = read_geojson(ex.export_regions())
    assert "Area µm^2" in anns[0].measurements
    assert {str(u) for la in viewer.layers for u in la.units[-2:]} == {"micrometer"}


@pytest.mark.gui
def test_entering_an_mpp_moves_every_overlay_with_the_slide(make_napari_viewer, tcga):
    """Overlays drawn while the slide was in pixels (or at another mpp) stay on the same tissue."""
    from napari_histokd._widgets._common import apply_mpp

    viewer = make_napari_viewer()
    with pytest.warns(UserWarning, match="mpp"):
        [layer] = viewer.open(str(tcga), plugin="napari-histokd")
    points = viewer.add_points([[100.0, 200.0]], metadata={"world_mpp": 1.0})
    apply_mpp(viewer, layer, 0.5)
    np.testing.assert_allclose(points.data_to_world(points.data[0]), [50.0, 100.0])
    assert points.metadata["world_mpp"] == 0.5 and str(points.units[-1]) == "micrometer"
    np.testing.assert_allclose(layer.data_to_world([100.0, 200.0])[-2:], [50.0, 100.0])
    apply_mpp(viewer, layer, 0.25)  # corrected: both move again, still together
    np.testing.assert_allclose(points.data_to_world(points.data[0]), [25.0, 50.0])
    np.testing.assert_allclose(layer.data_to_world([100.0, 200.0])[-2:], [25.0, 50.0])
    assert layer.metadata["mpp"] == 0.25 and not layer.metadata["mpp_missing"]
    from napari_histokd._widgets._common import mpp_hint

    assert mpp_hint(layer.metadata) == "0.25 um/px entered in the viewer"
    assert mpp_hint({"mpp": 0.499, "mpp_source": "metadata", "magnification": 20.0}) == \
        "0.499 um/px from the file, objective 20x"
    assert "about 0.25 um/px" in mpp_hint({"mpp": None, "magnification": 40.0})
