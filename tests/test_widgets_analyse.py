"""Analyse widget and overlays under Xvfb: a checkpoint trained here, a synthetic slide with a
planted region, layers aligned with the slide, pathway selector, GeoJSON round trip."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from histokd_core.bag import Bag, DataInfo
from histokd_core.features.store import write_slide_features
from histokd_core.methods.base import Explanation
from histokd_core.synthetic import PlantedRegion, write_synthetic_slide
from histokd_core.train import TrainConfig, run_cv
from napari_histokd._layers import explanation_layers
from napari_histokd._reader import read_slides

pytestmark = pytest.mark.gui

MPP = 0.5
P = 256
H, W = 2048, 3072
REGION = PlantedRegion("tumor", y0=768, x0=1792, y1=1280, x1=2560)  # 2 x 3 patches
D = 16


def lattice() -> np.ndarray:
    ys, xs = np.mgrid[0:H:P, 0:W:P]
    return np.stack([xs.ravel(), ys.ravel()], 1).astype(np.int64)


def in_region(coords: np.ndarray) -> np.ndarray:
    """``(n,)`` bool: the patches whose top-left corner lies in :data:`REGION`."""
    return ((coords[:, 0] >= REGION.x0) & (coords[:, 0] < REGION.x1)
            & (coords[:, 1] >= REGION.y0) & (coords[:, 1] < REGION.y1))


def planted_feats(coords, box, rng, direction):
    x0, y0, x1, y1 = box
    f = rng.normal(size=(len(coords), D)).astype(np.float32)
    inside = (coords[:, 0] >= x0) & (coords[:, 0] < x1) & (coords[:, 1] >= y0) & (coords[:, 1] < y1)
    f[inside] += 3.0 * direction
    return f, inside


def make_bags(n, seed, direction):
    """Half the bags carry a planted 2 x 3 patch box (label 1), the others none (label 0)."""
    rng = np.random.default_rng(seed)
    coords = lattice()
    bags = []
    for i in range(n):
        label = i % 2
        c0, r0 = rng.integers(0, W // P - 3), rng.integers(0, H // P - 2)
        box = (c0 * P, r0 * P, (c0 + 3) * P, (r0 + 2) * P) if label else (0, 0, 0, 0)
        f, _ = planted_feats(coords, box, rng, direction)
        bags.append(Bag(case_id=f"c{seed}_{i}", feats=torch.from_numpy(f), coords=torch.from_numpy(coords),
                        patch_size=P, label=label))
    return bags


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A synthetic slide, its features (planted where the slide's region is) and an ABMIL
    checkpoint trained here to find the planted patches."""
    root = tmp_path_factory.mktemp("analyse")
    slide = write_synthetic_slide(root / "slide.tif", (H, W), mpp=MPP, regions=[REGION], seed=1,
                                  tissue=False, workers=1)
    direction = np.zeros(D, dtype=np.float32)
    direction[:4] = 1.0
    info = DataInfo(task="classification", feat_dim=D, n_classes=2, encoder_id="test-enc")
    parts = [make_bags(16, s, direction) for s in (1, 2)]
    data = SimpleNamespace(n_folds=1, fold=lambda i: SimpleNamespace(
        train=parts[0], val=parts[1][:8], test=parts[1][8:], info=info))
    torch.manual_seed(0)
    run_cv("baselines", {"models": ["abmil"]}, data, root / "run",
           TrainConfig(epochs=6, lr=3e-3, batch_size=4, seed=0, device="cpu", patience=50, num_threads=1), folds=[0])
    coords = lattice()
    f, inside = planted_feats(coords, (REGION.x0, REGION.y0, REGION.x1, REGION.y1),
                              np.random.default_rng(9), direction)
    write_slide_features(root / "feats", "slide", "20x", f, coords,
                         {"encoder_id": "test-enc", "patch_size_level0": P, "mpp": MPP})
    return SimpleNamespace(slide=slide, checkpoint=root / "run" / "fold_0" / "abmil.safetensors",
                           features=root / "feats", inside=inside, coords=coords, root=root)


@pytest.fixture(scope="module")
def hed_checkpoint(tmp_path_factory):
    """An ABMIL checkpoint on ``hed-texture`` features (random bags, one epoch): "extract now"
    rebuilds its encoder from the id its features carry."""
    from histokd_core.features import get_encoder

    enc = get_encoder("hed-texture", device="cpu")
    info = DataInfo(task="classification", feat_dim=enc.dim, n_classes=2, encoder_id=enc.id)
    rng = np.random.default_rng(0)
    coords = torch.from_numpy(lattice())
    bags = [Bag(case_id=f"h{i}", feats=torch.from_numpy(rng.normal(size=(len(coords), enc.dim)).astype(np.float32)),
                coords=coords, patch_size=P, label=i % 2) for i in range(8)]
    data = SimpleNamespace(n_folds=1, fold=lambda i: SimpleNamespace(
        train=bags[:4], val=bags[4:6], test=bags[6:], info=info))
    run = tmp_path_factory.mktemp("hed") / "run"
    run_cv("baselines", {"models": ["abmil"]}, data, run,
           TrainConfig(epochs=1, batch_size=4, seed=0, device="cpu", num_threads=1), folds=[0])
    return run / "fold_0" / "abmil.safetensors"


@pytest.fixture
def slide_dock(make_napari_viewer, trained):
    """A viewer holding the synthetic slide (opened by the plugin's reader) and an Analyse dock on
    it, nothing entered yet."""
    from napari_histokd._widgets.analyse import AnalyseWidget

    viewer = make_napari_viewer()
    (data, kwargs, _), = read_slides(str(trained.slide.path))
    layer = viewer.add_image(data, **kwargs)
    return SimpleNamespace(viewer=viewer, slide=layer, w=AnalyseWidget(viewer))


def outer_bounds(layer):
    """World ``(2, 2)`` outer pixel edges of the last two axes (extent.world spans pixel centres)."""
    ext = np.asarray(layer.extent.world)[:, -2:]
    half = np.asarray(layer.scale[-2:]) / 2
    return np.stack([ext[0] - half, ext[1] + half])


def run_analysis(w, qtbot, timeout_ms: int) -> list[tuple[float, str]]:
    """Press Analyse, wait for the worker, check it produced an analysis; the progress reports."""
    progress = []
    w.signals.progress.connect(lambda f, m: progress.append((f, m)))
    assert w.start() is not None
    qtbot.waitUntil(w.run_btn.isEnabled, timeout=timeout_ms)
    assert w.analysis is not None, w.status.text()
    return progress


def test_analyse_widget_overlays_align_with_the_planted_region(slide_dock, qtbot, trained):
    viewer, slide_layer, w = slide_dock.viewer, slide_dock.slide, slide_dock.w
    assert w.slide.currentText() == slide_layer.name
    w.checkpoint.setText(str(trained.checkpoint))
    w.features.setText(str(trained.features))
    w.slide_id.setText("slide")
    w.device.setCurrentText("cpu")
    progress = run_analysis(w, qtbot, 60_000)
    assert progress and progress[-1][0] == 1.0
    heat = w.layers["attention"]
    # extent: the heatmap covers exactly the slide (the lattice tiles it) in microns
    np.testing.assert_allclose(outer_bounds(heat), outer_bounds(slide_layer), atol=1e-6)
    # the attention maximum lies inside the planted region, in world coordinates
    r, c = np.unravel_index(np.nanargmax(heat.data), heat.data.shape)
    y_um, x_um = np.asarray(heat.data_to_world((r, c)))
    assert REGION.x0 * MPP <= x_um < REGION.x1 * MPP and REGION.y0 * MPP <= y_um < REGION.y1 * MPP
    # and the slide layer value under it is the planted texture's pixel (same world point)
    px = np.round(np.asarray(slide_layer.world_to_data((y_um, x_um)))).astype(int)
    assert REGION.y0 <= px[0] < REGION.y1 and REGION.x0 <= px[1] < REGION.x1
    assert np.isfinite(heat.data).all()
    assert "P(positive)" in w.prediction.text()
    assert "group:" in w.prediction.text()
    # ABMIL has no pathways, clusters or memory: those parts of the dock stay hidden
    assert w.pathways.isHidden() and w.clusters_legend.isHidden() and w.component.isHidden()


def test_analyse_widget_extracts_features_now(slide_dock, qtbot, trained, hed_checkpoint, tmp_path):
    """"extract now": the checkpoint's encoder (rebuilt from the id its features carry) extracts
    the open slide into the chosen folder, then the overlays appear over the slide."""
    from histokd_core.features import get_encoder, open_features

    enc = get_encoder("hed-texture", device="cpu")

    viewer, slide_layer, w = slide_dock.viewer, slide_dock.slide, slide_dock.w
    w.checkpoint.setText(str(hed_checkpoint))
    w.extract_now.setChecked(True)
    w.extract_to.setText(str(tmp_path / "extracted"))
    w.device.setCurrentText("cpu")
    progress = run_analysis(w, qtbot, 120_000)
    assert any(m.startswith("extracting features") for _, m in progress)
    sf = open_features(tmp_path / "extracted", "slide")
    assert sf.attrs["encoder_id"] == enc.id
    assert w.analysis.explanation.coords.shape[0] == len(sf.coords("20x")) > 0
    # the heatmap spans exactly the extracted patches (tissue only), in microns on the slide
    c = sf.coords("20x")
    span = np.array([c.min(0), c.max(0) + P])[:, ::-1] * MPP - MPP / 2  # (y, x) outer edges
    np.testing.assert_allclose(outer_bounds(w.layers["attention"]), span, atol=1e-6)
    slide = outer_bounds(slide_layer)
    assert (span[0] >= slide[0]).all() and (span[1] <= slide[1]).all()


def test_analyse_widget_errors_become_notifications(slide_dock, qtbot, trained, monkeypatch):
    shown = []
    monkeypatch.setattr("napari.utils.notifications.show_error", shown.append)
    viewer, w = slide_dock.viewer, slide_dock.w
    w.checkpoint.setText(str(trained.root / "missing.safetensors"))
    w.features.setText(str(trained.features))
    assert w.start() is not None
    qtbot.waitUntil(w.run_btn.isEnabled, timeout=30_000)
    assert shown and "missing.safetensors" in shown[0]
    assert w.run_btn.isEnabled() and w.analysis is None


def rich_explanation():
    """Every overlay kind at once (as AMKD, subspace and MoMKD fill them)."""
    coords = lattice()
    n = len(coords)
    rng = np.random.default_rng(0)
    a = rng.random(n)
    return Explanation(
        coords=coords, patch_size=P, attention=a / a.sum(),
        pathway_maps={"HALLMARK_HYPOXIA": rng.random(n), "HALLMARK_APOPTOSIS": np.arange(n, dtype=float)},
        pathway_scores={"HALLMARK_HYPOXIA": 0.2, "HALLMARK_APOPTOSIS": 0.7},
        clusters={"tumor": rng.integers(-1, 3, n), "tme": rng.integers(0, 2, n)},
        memory=rng.random((2, n)), memory_names=["C+0", "C-0"],
        top_patches={"C+0": np.array([0, 1, 2]), "C-0": np.array([5, 6, 7])},
        probability=0.8, risk_group="positive",
    )


def test_pathway_selector_swaps_map_and_legends(slide_dock, trained):
    from histokd_core.workflows import Analysis
    from napari_histokd._widgets.analyse import add_analysis_layers

    viewer, slide_layer, w = slide_dock.viewer, slide_dock.slide, slide_dock.w
    expl = rich_explanation()
    w.analysis = Analysis(expl, {"method": "test", "data_info": {"driver_pathways": ["HALLMARK_HYPOXIA"]}},
                          "s", trained.features)
    w.layers = add_analysis_layers(viewer, w.analysis, MPP, units=("um", "um"))
    w.show_results()
    assert {"attention", "pathway", "clusters:tumor", "clusters:tme", "memory", "top_patches"} <= set(w.layers)
    # a calm viewer: only the main map (attention) is visible, with its colour bar
    visible = [k for k, lyr in w.layers.items() if lyr.visible and k != "top_patches"]
    assert visible == ["attention"]
    assert w.layers["attention"].colorbar.visible
    # ranked by |score|: APOPTOSIS (0.7) first, with rank, signed contribution and its meaning
    first = w.pathways.item(0)
    assert first.text().startswith("1. HALLMARK_APOPTOSIS") and "+0.7 (raises risk)" in first.text()
    assert "HALLMARK_APOPTOSIS" in first.toolTip() and "gradient x input" in first.toolTip()
    # the data names HYPOXIA as the planted driver: highlighted
    assert "[planted driver]" in w.pathways.item(1).text() and w.pathways.item(1).font().bold()
    layer = w.layers["pathway"]
    before = np.array(layer.data)
    w.pathways.setCurrentRow(1)
    assert layer.metadata["pathway"] == "HALLMARK_HYPOXIA"
    assert not np.allclose(np.array(layer.data), before, equal_nan=True)
    assert [k for k, lyr in w.layers.items() if lyr.visible and k != "top_patches"] == ["pathway"]
    # top patches follow the shown map: HYPOXIA's ranked patches, labelled 1..k
    top = w.layers["top_patches"]
    n = len(expl.coords)
    expected = np.argsort(-expl.pathway_maps["HALLMARK_HYPOXIA"], kind="stable")[: len(top.data)]
    np.testing.assert_array_equal(top.features["index"], expected)
    assert top.features["rank"].tolist() == list(range(1, len(expected) + 1))
    assert w.top_list.count() == len(expected) and w.top_list.item(0).text().startswith("#1")
    assert "x uniform" in w.top_list.item(0).text()
    assert expl.pathway_maps["HALLMARK_HYPOXIA"][expected[0]] * n == pytest.approx(
        float(w.top_list.item(0).text().split()[1]), rel=1e-2)
    # Labels: ids shifted by one, -1 is background, legend of sizes with colour swatches; read-only
    tumor = w.layers["clusters:tumor"]
    assert tumor.metadata["legend"] == {k: int((expl.clusters["tumor"] == k).sum()) for k in range(3)}
    assert "tumor" in w.clusters_legend.text() and "#0:" in w.clusters_legend.text()
    assert not (w.pathways.isHidden() or w.clusters_legend.isHidden() or w.component.isHidden())
    assert "background-color:#1f77b4" in w.clusters_legend.text()  # cluster 0's colour
    assert not tumor.editable
    tumor.visible = False
    tumor.visible = True  # napari resets editable when a layer is shown: it stays read-only
    assert not tumor.editable
    controls = viewer.window._qt_viewer.controls.widgets[tumor]  # no paint tools on show
    assert controls.paint_button.isHidden() and controls.fill_button.isHidden()
    assert all(w.isHidden() for row in controls._brush_size_slider_control.get_widget_controls()
               for w in row)
    assert not any(w.isHidden() for row in controls._opacity_blending_controls.get_widget_controls()
                   for w in row)  # opacity and blending stay
    for lyr in (layer, tumor, w.layers["attention"]):
        np.testing.assert_allclose(outer_bounds(lyr), outer_bounds(slide_layer), atol=1e-6)
    # memory selector: names, not numbers; shows the component and its top patches only
    assert w.component.itemText(1) == "C-0 (negative-class component 0)"
    w.component.setCurrentIndex(1)
    memory = w.layers["memory"]
    assert memory.metadata["component"] == 1 and memory.ndim == 2 and viewer.dims.ndim == 2
    np.testing.assert_array_equal(memory.data, memory.metadata["memory_grids"][1])
    assert memory.name == "s memory: C-0"
    assert top.features["index"].tolist() == [5, 6, 7] and top.visible
    assert w.layers["memory"].visible and not w.layers["pathway"].visible
    assert "P(positive) 0.800" in w.prediction.text() and "P(positive) >= 0.5" in w.prediction.text()
    # clusters: no colour bar, no top patches
    w.show_map("clusters:tumor")
    assert not top.visible and not w.colourbar.isVisible()


def test_colour_bar_has_the_unit_and_range_of_the_map(make_napari_viewer, trained):
    """Attention in multiples of uniform: the bar runs 0 .. max(2, slide max), the napari colour
    bar is on for the shown map only, and a nearly flat map says so."""
    from histokd_core.methods.base import Explanation as E
    from histokd_core.workflows import Analysis
    from napari_histokd._widgets.analyse import AnalyseWidget, add_analysis_layers

    viewer = make_napari_viewer(show=True)
    w = AnalyseWidget(viewer)
    expl = rich_explanation()
    w.analysis = Analysis(expl, {}, "s", trained.features)
    w.layers = add_analysis_layers(viewer, w.analysis, MPP, units=("um", "um"))
    w.show_results()
    att = w.layers["attention"]
    n = len(expl.coords)
    top = float(np.max(expl.attention) * n)
    assert att.contrast_limits == pytest.approx([0.0, max(2.0, top)])
    assert np.nanmax(att.data) == pytest.approx(top, rel=1e-6)  # data in multiples of uniform
    assert w.colourbar.caption() == "x uniform (1/n)"
    assert w.colourbar.tick_labels() == ["0", f"{max(2.0, top) / 2:.3g}", f"{max(2.0, top):.3g}"]
    assert att.colorbar.visible and not w.layers["pathway"].colorbar.visible
    assert att.colormap.colors[0][3] == 0.0  # transparent at the low end
    assert "relative to uniform" in w.legend_note.text()
    # napari's own colour bar has a caption over it on the canvas: the map, its unit and range
    caption = viewer.canvas.overlays.text
    assert caption.visible and caption.position == "top_right"
    assert caption.text.splitlines() == ["attention", att.metadata["scale"]["label"]]
    assert "x uniform (1/n): 0 to" in caption.text
    # a pathway map: its signed score in words
    w.show_pathway("HALLMARK_APOPTOSIS")
    assert caption.text.startswith("pathway HALLMARK_APOPTOSIS, score +0.7 (raises risk)")
    # the memory map is a cosine similarity on a symmetric, diverging scale
    w.show_map("memory")
    lo, hi = w.layers["memory"].contrast_limits
    assert lo == -hi and w.colourbar.caption() == "cosine similarity"
    assert w.layers["memory"].colorbar.visible and not att.colorbar.visible
    assert "cosine similarity" in caption.text and "-1 opposite" in caption.text
    w.show_map("clusters:tumor")
    assert not caption.visible  # a cluster map has no colour bar
    # the CMU case: 35 patches with attention 0.0275..0.0295 is flagged, not stretched
    flat = np.linspace(0.0275, 0.0295, 35)
    flat_expl = E(coords=expl.coords[:35], patch_size=P, attention=flat / flat.sum())
    w.analysis = Analysis(flat_expl, {}, "s", trained.features)
    w.layers = add_analysis_layers(viewer, w.analysis, MPP, units=("um", "um"))
    w.show_results()
    assert w.layers["attention"].contrast_limits == [0.0, 2.0]
    assert "nearly uniform" in w.legend_note.text()
    w.grab()  # the bar paints


def test_a_linear_students_risk_contribution_is_the_main_map(make_napari_viewer, trained):
    """A mean-pooling student (uniform attention, signed per-patch risk contribution): the
    contribution is shown first, symmetric around 0 with the model's unit (log-hazard; log-odds
    for a two-class student) on both colour bars;
    the flat attention is flagged and drawn faint so it never hides the tissue; a fixed colour
    scale falls back to the slide's for the contribution and says so; the export dock offers it."""
    from histokd_core.workflows import Analysis
    from napari_histokd._layers import NEAR_UNIFORM_OPACITY
    from napari_histokd._widgets.analyse import AnalyseWidget, add_analysis_layers
    from napari_histokd._widgets.export import ExportWidget

    viewer = make_napari_viewer(show=True)
    w = AnalyseWidget(viewer)
    coords = lattice()
    n = len(coords)
    inside = in_region(coords)
    contribution = np.where(inside, 0.02, -0.001)
    expl = Explanation(coords=coords, patch_size=P, attention=np.full(n, 1.0 / n),
                       contribution=contribution,
                       contribution_unit="risk contribution (log-hazard)", risk=float(contribution.sum()) + 0.1)
    w.analysis = Analysis(expl, {}, "s", trained.features)
    w.layers = add_analysis_layers(viewer, w.analysis, MPP, units=("um", "um"))
    w.show_results()
    assert [k for k, lyr in w.layers.items() if lyr.visible] == ["contribution"]
    c = w.layers["contribution"]
    assert c.contrast_limits == pytest.approx([-0.02, 0.02])
    assert c.metadata["scale"]["kind"] == "contribution" and c.opacity == 1.0
    middle = c.colormap.colors[len(c.colormap.colors) // 2]
    assert middle[3] == pytest.approx(0.0, abs=0.02)  # transparent at 0
    assert w.colourbar.caption() == "risk contribution (log-hazard)"
    caption = viewer.canvas.overlays.text.text.splitlines()
    assert caption == ["contribution per patch",
                       "risk contribution (log-hazard): -0.02 to 0.02 (slide scale)",
                       "+ raises it, - lowers it; patches add up to it - bias"]
    assert "add up to it minus the model" in w.legend_note.text()
    # top patches: the most risk-raising ones, in log-hazard
    assert all(inside[i] for i in w._top[: int(inside.sum())])
    assert "0.02 risk contribution (log-hazard)" in w.top_list.item(0).text()
    # the uniform attention: flagged and faint
    att = w.layers["attention"]
    assert att.metadata["scale"]["near_uniform"] and att.opacity == NEAR_UNIFORM_OPACITY
    # a fixed scale has no range for a risk contribution: the slide's, with a note
    w.layers = add_analysis_layers(viewer, w.analysis, MPP, units=("um", "um"), scale_mode="fixed")
    w.show_results()
    scale = w.layers["contribution"].metadata["scale"]
    assert scale["mode"] == "slide" and "no fixed range for contribution maps" in scale["note"]
    assert scale["unit"] == "risk contribution (log-hazard)"
    assert w.layers["attention"].contrast_limits == [0.0, 4.0]
    export = ExportWidget(viewer)
    assert "s contribution" in [export.heatmap.itemText(i) for i in range(export.heatmap.count())]
    # the unit is the model's: a two-class linear subspace student's share of the log-odds
    odds = Explanation(coords=coords, patch_size=P, attention=np.full(n, 1.0 / n),
                       contribution=contribution,
                       contribution_unit="log-odds contribution (class 1 vs class 0)",
                       probability=0.7)
    w.analysis = Analysis(odds, {}, "s", trained.features)
    w.layers = add_analysis_layers(viewer, w.analysis, MPP, units=("um", "um"))
    w.show_results()
    assert w.colourbar.caption() == "log-odds contribution (class 1 vs class 0)"
    assert "log-odds" in viewer.canvas.overlays.text.text.splitlines()[1]


def test_a_linear_students_signed_pathway_maps(make_napari_viewer, trained):
    """Pathway maps that state a unit (the linear AMKD student's: each patch's share of the
    pathway's predicted activity) are drawn as signed contributions, symmetric around 0 in that
    unit, not as attention; the score's meaning is the model's."""
    from histokd_core.methods.amkd.linear_student import PATHWAY_SCORE_UNIT, PATHWAY_UNIT
    from histokd_core.workflows import Analysis
    from napari_histokd._widgets.analyse import AnalyseWidget, add_analysis_layers

    viewer = make_napari_viewer(show=True)
    w = AnalyseWidget(viewer)
    coords = lattice()
    n = len(coords)
    inside = in_region(coords)
    maps = {"HALLMARK_E2F_TARGETS": np.where(inside, 0.05, -0.002),
            "NOISE_PATHWAY_1": np.where(inside, -0.01, 0.001)}
    expl = Explanation(coords=coords, patch_size=P, attention=np.full(n, 1.0 / n),
                       contribution=np.where(inside, 0.02, -0.001),
                       contribution_unit="risk contribution (log-hazard)", pathway_maps=maps,
                       pathway_scores={"HALLMARK_E2F_TARGETS": 0.4, "NOISE_PATHWAY_1": -0.01},
                       pathway_unit=PATHWAY_UNIT, pathway_score_unit=PATHWAY_SCORE_UNIT)
    w.analysis = Analysis(expl, {}, "s", trained.features)
    w.layers = add_analysis_layers(viewer, w.analysis, MPP, units=("um", "um"))
    w.show_results()
    w.show_map("pathway")
    layer = w.layers["pathway"]
    scale = layer.metadata["scale"]
    assert scale["kind"] == "contribution" and scale["unit"] == PATHWAY_UNIT
    assert layer.contrast_limits == pytest.approx([-0.05, 0.05])
    assert w.colourbar.caption() == PATHWAY_UNIT
    assert "0.05 " + PATHWAY_UNIT in w.top_list.item(0).text()  # the value, not x uniform
    assert "covariance over the training cases" in w.pathways.item(0).toolTip()
    assert "covariance over the training cases" in w.pathway_unit.text()
    w.pathways.setCurrentRow(1)
    assert layer.metadata["pathway"] == "NOISE_PATHWAY_1"
    assert layer.metadata["scale"]["kind"] == "contribution"
    assert layer.contrast_limits == pytest.approx([-0.01, 0.01])


def test_rerun_replaces_the_previous_layers_and_top_patch_click_moves_the_camera(slide_dock, qtbot, trained):
    viewer, w = slide_dock.viewer, slide_dock.w
    w.checkpoint.setText(str(trained.checkpoint))
    w.features.setText(str(trained.features))
    w.slide_id.setText("slide")
    w.device.setCurrentText("cpu")
    run_analysis(w, qtbot, 60_000)
    names = sorted(layer.name for layer in viewer.layers)
    first = dict(w.layers)
    w.analysis = None
    run_analysis(w, qtbot, 60_000)
    assert sorted(layer.name for layer in viewer.layers) == names  # replaced, not stacked
    assert all(layer not in viewer.layers for layer in first.values())
    assert len(viewer.layers) == 1 + len(w.layers)
    # the top-patch list centres the camera on the patch it names
    assert w.top_list.count() > 0
    expl = w.analysis.explanation
    viewer.camera.center = (0.0, 0.0)
    w.top_list.setCurrentRow(2)
    x, y = expl.coords[w._top[2]]
    centre = ((y + (P - 1) / 2) * MPP, (x + (P - 1) / 2) * MPP)
    np.testing.assert_allclose(viewer.camera.center[-2:], centre, atol=1e-6)
    assert viewer.camera.zoom == pytest.approx(600.0 / (4 * P * MPP))


def test_layers_follow_a_pixel_unit_slide():
    expl = rich_explanation()
    layers = {k["name"]: (d, k, t) for d, k, t in explanation_layers(expl, world_mpp=1.0)}
    d, k, t = layers["attention"]
    assert k["scale"] == (256.0, 256.0) and k["translate"] == (127.5, 127.5)
    assert k["visible"] and not layers["pathway"][1]["visible"]
    d, k, t = layers["memory: C+0"]  # one component at a time: 2-D, no slider
    assert d.shape == (H // P, W // P) and k["scale"] == (256.0, 256.0)
    assert k["metadata"]["memory_grids"].shape == (2, H // P, W // P)


def test_export_widget_regions_top_patches_and_overwrite(make_napari_viewer, trained, tmp_path):
    from histokd_core.explain import rasterize, threshold_regions
    from histokd_core.export import read_geojson
    from histokd_core.workflows import Analysis
    from napari_histokd._widgets.analyse import add_analysis_layers
    from napari_histokd._widgets.export import ExportWidget

    viewer = make_napari_viewer()
    (data, kwargs, kind), = read_slides(str(trained.slide.path))
    viewer.add_image(data, **kwargs)
    expl = rich_explanation()
    layers = add_analysis_layers(viewer, Analysis(expl, {}, "s", trained.features, trained.slide.path), MPP,
                                 units=("um", "um"), slide_mpp=MPP)
    w = ExportWidget(viewer)
    w.heatmap.setCurrentText(layers["attention"].name)
    w.set_quantile()
    thr = w.threshold.value()
    out = tmp_path / "regions.geojson"
    w.out.setText(str(out))
    assert w.export_regions() == out
    # the heatmap is in multiples of uniform attention (1/n): so is the threshold
    expected = threshold_regions(rasterize(expl.coords, expl.attention * len(expl.coords), P), thr)
    anns = read_geojson(out)
    assert len(anns) == len(expected)
    assert anns[0].geometry.equals(expected[0].polygon)
    assert anns[0].measurements["Area µm^2"] == pytest.approx(expected[0].polygon.area * MPP**2)
    shapes = viewer.layers[f"{layers['attention'].name} regions"]
    # same units as the slide: no "Inconsistent units" warning, the scale bar stays in um
    assert {str(u) for layer in viewer.layers for u in layer.units[-2:]} == {"micrometer"}
    # the region outline lies on patch edges in world microns: (x - 0.5) * mpp
    xs = np.asarray(shapes.data[0])[:, 1] / MPP + 0.5
    assert np.allclose(xs % P, 0)
    # overwrite: refused without confirmation, replaced with it
    w.confirm_overwrite = lambda path: False
    before = out.read_bytes()
    assert w.export_regions() is None and out.read_bytes() == before and "kept" in w.status.text()
    w.confirm_overwrite = lambda path: True
    assert w.export_regions() == out
    # top-k patches: CSV + PNG crops at level 1
    w.top_k.setValue(4)
    w.level.setValue(1)
    w.out.setText(str(tmp_path / "top.csv"))
    path = w.export_top_patches()
    import pandas as pd

    table = pd.read_csv(path)
    assert len(table) == 4 and table["attention"].is_monotonic_decreasing
    assert {"cluster_tumor", "cluster_tme"} <= set(table.columns)
    assert len(list((tmp_path / "top").glob("*.png"))) == 4
    # errors become a status line + notification, not an exception
    w.heatmap.clear()
    assert w._guard(w.export_regions) is None and "Analyse" in w.status.text()


@pytest.mark.parametrize("slide_mpp", [1.0, None])
def test_region_areas_follow_the_slide_mpp_not_the_world_scale(make_napari_viewer, trained, tmp_path,
                                                                slide_mpp):
    """A slide at exactly 1 um/px gets areas; a slide without mpp (shown in pixels) gets none,
    though both have a world scale of 1.0."""
    from histokd_core.export import read_geojson
    from histokd_core.workflows import Analysis
    from napari_histokd._widgets.analyse import add_analysis_layers
    from napari_histokd._widgets.export import ExportWidget

    viewer = make_napari_viewer()
    layers = add_analysis_layers(viewer, Analysis(rich_explanation(), {}, "s", trained.features), 1.0,
                                 slide_mpp=slide_mpp)
    w = ExportWidget(viewer)
    w.heatmap.setCurrentText(layers["attention"].name)
    w.set_quantile()
    w.out.setText(str(tmp_path / "r.geojson"))
    (ann, *_) = read_geojson(w.export_regions())
    assert ("Area µm^2" in ann.measurements) == (slide_mpp is not None)


def test_cancel_stops_within_a_second_and_keeps_the_features(slide_dock, qtbot, trained, hed_checkpoint, tmp_path,
                                                              monkeypatch):
    """Cancel in the Analyse dock during "extract now": the worker stops within a second (tile
    loader processes included), the patches done are kept, and the next run resumes after them."""
    import time

    import histokd_core.features as features
    from histokd_core.features import get_encoder
    from histokd_core.features.extract import partial_path

    enc = get_encoder("hed-texture", device="cpu")

    class Slow:
        """The real encoder at 0.1 s per patch (a slow CPU encoder)."""

        def __init__(self, inner):
            self.inner = inner
            self.id, self.dim, self.input_size = inner.id, inner.dim, inner.input_size
            self.weights_hash, self.device, self.batch_size = inner.weights_hash, inner.device, 64
            self.count = 0

        def encode(self, batch):
            time.sleep(0.1 * len(batch))
            self.count += len(batch)
            return self.inner.encode(batch)

    slow = Slow(enc)
    monkeypatch.setattr(features, "get_encoder", lambda *a, **k: slow)
    viewer, w = slide_dock.viewer, slide_dock.w
    w.checkpoint.setText(str(hed_checkpoint))
    w.extract_now.setChecked(True)
    w.extract_to.setText(str(tmp_path / "extracted"))
    w.device.setCurrentText("cpu")
    messages = []
    w.signals.progress.connect(lambda f, m: messages.append(m))
    assert w.start() is not None
    qtbot.waitUntil(lambda: any("patches/s" in m for m in messages), timeout=120_000)
    qtbot.wait(300)
    t0 = time.perf_counter()
    w.cancel()
    qtbot.waitUntil(w.run_btn.isEnabled, timeout=10_000)
    latency = time.perf_counter() - t0
    assert latency < 1.5, f"cancel took {latency:.2f} s"
    assert w.analysis is None and "kept" in w.status.text()
    kept_file = partial_path(tmp_path / "extracted", "slide", "20x")
    assert kept_file.is_file()
    with np.load(kept_file, allow_pickle=False) as z:
        kept = len(z["feats"])
    assert kept >= 1
    # next run: resumes after the kept patches, finishes, shows the overlays
    encoded_before = slow.count
    run_analysis(w, qtbot, 300_000)
    n = len(w.analysis.explanation.coords)
    assert slow.count - encoded_before == n - kept
    assert not kept_file.exists()
    print(f"cancel latency {latency:.2f} s, kept {kept} of {n} patches")


def test_fine_map_option_adds_one_multiscale_layer(slide_dock, qtbot, trained, hed_checkpoint, tmp_path):
    """Analyse with "overlapping patches, stride patch/2": one lazy multiscale layer on the slide,
    shown instead of the coarse map, whose pixels average the covering patches (x uniform)."""
    viewer, slide_layer, w = slide_dock.viewer, slide_dock.slide, slide_dock.w
    w.checkpoint.setText(str(hed_checkpoint))
    w.extract_now.setChecked(True)
    w.extract_to.setText(str(tmp_path / "extracted"))
    w.device.setCurrentText("cpu")
    w.fine.setCurrentIndex(1)  # stride patch/2
    run_analysis(w, qtbot, 300_000)
    fine = w.layers["fine"]
    levels = fine.data if fine.multiscale else [fine.data]
    assert fine.visible and fine.metadata["stride_level0"] == P // 2
    assert [k for k, lyr in w.layers.items() if lyr.visible and k != "top_patches"] == ["fine"]
    assert w.map.currentData() == "fine" and w.colourbar.caption() == "x uniform (1/n)"
    assert str(fine.units[-1]) == "micrometer"
    # the map covers the slide: same outer world bounds (to within one map pixel)
    np.testing.assert_allclose(outer_bounds(fine)[1], outer_bounds(slide_layer)[1], atol=fine.scale[-1])
    # overlapping lattice at P/2; each finite pixel is the mean of the covering patches' values
    c, v = fine.metadata["patch_coords"], fine.metadata["patch_values"]
    assert len(c) > 0 and set(np.unique(c % P)) <= {0, P // 2} and len(np.unique(c[:, 0] % P)) == 2
    assert v.sum() == pytest.approx(len(v))  # multiples of uniform average to 1
    level0 = np.asarray(levels[0])
    ds = fine.metadata["downsamples"][0]
    checked = 0
    for r, col in np.argwhere(np.isfinite(level0))[::7]:
        px, py = (col + 0.5) * ds, (r + 0.5) * ds
        covering = (c[:, 0] <= px) & (px < c[:, 0] + P) & (c[:, 1] <= py) & (py < c[:, 1] + P)
        assert level0[r, col] == pytest.approx(v[covering].mean(), rel=1e-5)
        checked += 1
    assert checked > 0
    assert np.nanmax(level0) <= fine.contrast_limits[1] + 1e-4


@pytest.fixture
def cohort_dock(make_napari_viewer, run_dir, cohort_dir):
    """The Analyse dock on a viewer with a stand-in slide layer, the checkpoint of ``run_dir`` and
    the features of ``cohort_dir``; its "all slides of this run" panel with the cohort table."""
    from napari_histokd._widgets.analyse import AnalyseWidget

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((64, 64, 3), np.uint8), name="stand-in slide", rgb=True)
    w = AnalyseWidget(viewer)
    w.mpp.setValue(MPP)
    w.checkpoint.setText(str(run_dir / "fold_0" / "abmil.safetensors"))
    w.features.setText(str(cohort_dir / "features"))
    w.device.setCurrentText("cpu")
    w.cohort_maps.cohort.setText(str(cohort_dir / "cohort.csv"))
    w.cohort_maps.workers.setValue(1)
    return SimpleNamespace(viewer=viewer, w=w, panel=w.cohort_maps)


def test_all_slides_of_the_run_then_one_cohort_colour_scale_on_two_slides(cohort_dock, qtbot, run_dir,
                                                                           cohort_dir, tmp_path):
    """"All slides of this run" predicts every slide of the cohort in a worker (progress per
    slide), shows the summary and the output folder; the cohort colour scale then gives two
    slides the same range (the run's, from its test cases) and its unit shows on the canvas."""
    import json

    import pandas as pd

    w, panel = cohort_dock.w, cohort_dock.panel
    assert panel.run.text() == str(run_dir)  # from the checkpoint
    panel.maps.setText(str(tmp_path / "maps"))
    progress = []
    panel.signals.progress.connect(lambda f, m: progress.append(m))
    assert panel.start() is not None
    qtbot.waitUntil(panel.run_btn.isEnabled, timeout=180_000)
    slides = list(pd.read_csv(cohort_dir / "cohort.csv", dtype=str)["slide_id"])
    assert panel.result is not None and panel.result.ok, panel.status.text()
    assert f"{len(slides)} slide(s): {len(slides)} predicted" in panel.summary.text()
    assert "0 failed" in panel.summary.text() and "FAILED" not in panel.summary.text()
    assert str((tmp_path / "maps").resolve()) in panel.output.text()
    assert sum(f"/{len(slides)})" in m for m in progress) == len(slides)  # one report per slide
    scale = json.loads((tmp_path / "maps" / "colour_scale.json").read_text())["attention"]

    w.scale_mode.setCurrentText("cohort")
    limits = []
    for slide_id in slides[:2]:
        w.slide_id.setText(slide_id)
        w.analysis = None
        run_analysis(w, qtbot, 60_000)
        limits.append(list(w.layers["attention"].contrast_limits))
        assert w.layers["attention"].metadata["scale"]["mode"] == "cohort"
    assert limits[0] == limits[1] == pytest.approx([scale["low"], scale["high"]])
    caption = cohort_dock.viewer.canvas.overlays.text
    assert caption.visible and "x uniform (1/n)" in caption.text and "cohort scale" in caption.text


def test_all_slides_cancel_stops_at_once_and_reports_every_slide(cohort_dock, qtbot, cohort_dir, tmp_path):
    """Cancel after the first slide: the worker ends within a second, every slide not finished is
    in the summary as cancelled (none dropped), and the finished ones are kept."""
    import time

    import pandas as pd
    from qtpy.QtCore import Qt

    panel = cohort_dock.panel
    panel.maps.setText(str(tmp_path / "maps"))
    asked = []

    def cancel_after_first_slide(frac: float, message: str):
        if "(1/" in message and not asked:
            asked.append(time.perf_counter())
            panel.cancel()

    # direct: the cancel happens in the worker thread as the first slide is reported
    panel.signals.progress.connect(cancel_after_first_slide, Qt.ConnectionType.DirectConnection)
    assert panel.start() is not None
    qtbot.waitUntil(panel.run_btn.isEnabled, timeout=120_000)
    stopped = time.perf_counter()
    assert asked and stopped - asked[0] < 1.0, f"{stopped - asked[0]:.2f} s"
    print(f"all slides: cancel latency {stopped - asked[0]:.2f} s")
    n = len(pd.read_csv(cohort_dir / "cohort.csv"))
    summary = pd.read_csv(tmp_path / "maps" / "summary.csv")
    assert len(summary) == n and (summary["reason"] == "cancelled").sum() >= 1
    assert (summary["status"] == "done").sum() >= 1
    assert "cancelled" in panel.status.text() and "FAILED" in panel.summary.text()


def test_all_slides_cancel_while_the_cluster_starts(cohort_dock, qtbot, cohort_dir, tmp_path):
    """Cancel at once, while the dask workers are still starting: the dock does not wait for
    them; every slide is listed as cancelled."""
    import time

    import pandas as pd

    panel = cohort_dock.panel
    panel.maps.setText(str(tmp_path / "maps"))
    assert panel.start() is not None
    qtbot.wait(200)
    asked = time.perf_counter()
    panel.cancel()
    qtbot.waitUntil(panel.run_btn.isEnabled, timeout=60_000)
    assert time.perf_counter() - asked < 1.0
    summary = pd.read_csv(tmp_path / "maps" / "summary.csv")
    assert len(summary) == len(pd.read_csv(cohort_dir / "cohort.csv"))
    assert (summary["reason"] == "cancelled").all()


def test_cohort_scale_without_cohort_maps_says_what_to_do(cohort_dock, qtbot, cohort_dir, tmp_path,
                                                          monkeypatch):
    """The cohort colour scale before any "all slides" run: a notification that says to predict
    them first (before any analysis work), no layers."""
    import pandas as pd

    shown = []
    monkeypatch.setattr("napari.utils.notifications.show_error", shown.append)
    w = cohort_dock.w
    w.cohort_maps.maps.setText(str(tmp_path / "no maps yet"))
    w.scale_mode.setCurrentText("cohort")
    w.slide_id.setText(pd.read_csv(cohort_dir / "cohort.csv", dtype=str)["slide_id"][0])
    assert w.start() is not None
    qtbot.waitUntil(w.run_btn.isEnabled, timeout=30_000)
    assert shown and "predict all slides of the run" in shown[0]
    assert w.analysis is None and not w.layers
