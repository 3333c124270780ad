"""Regenerate the screenshots of docs/user-guide.md and docs/training.md (needs a display:
``xvfb-run -a .venv/bin/python docs/images/make_screenshots.py [--only NAME ...]``).

Everything shown is computed. Demo models (tiny AMKD, subspace and MoMKD students, as ``histokd
demo`` trains them) are trained here on a synthetic image cohort (real pyramidal slides,
``hed-texture`` features), then the Analyse dock runs them with "extract now" on the two real
slides in ``$HISTOKD_SHARED_DATA/slides`` (CMU-1-Small-Region, 0.499 um/px in its file, and the
TCGA frozen section, which has no mpp: it is entered in the dock). The Train dock runs the
baselines on a synthetic feature cohort.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from histokd_core.synthetic.cohort import make_feature_cohort
from histokd_core.train import TrainConfig, run_cv

HERE = Path(__file__).parent
SLIDES = Path(os.environ.get("HISTOKD_SHARED_DATA", HERE.parents[2] / "shared" / "data")) / "slides"
CMU = SLIDES / "CMU-1-Small-Region.svs"
TCGA = SLIDES / "TCGA-CR-7395-01A-01-TS1.svs"
#: the TCGA frozen section records no mpp; 0.5 um/px (a 20x scan) is entered in the dock.
TCGA_MPP = 0.5
#: the demo AMKD student's configuration.
AMKD_CONFIG = {"dim": 32, "heads": 2, "dim_head": 16, "pathway_hidden": 32}


def train_screenshot(tmp: Path) -> None:
    """train_dock.png: the Train dock running the baselines on a synthetic feature cohort."""
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_histokd._widgets.train import TrainWidget

    app = QApplication.instance() or QApplication([])
    cohort = make_feature_cohort(tmp / "cohort", n_cases=40, n_patches=16, feat_dim=8, seed=0, with_10x=False)
    viewer = napari.Viewer(show=True)
    train = TrainWidget(viewer)
    viewer.window.add_dock_widget(train, name="Train")
    viewer.window.resize(1400, 1000)
    train.paths["cohort"].setText(str(cohort.root / "cohort.csv"))
    train.paths["features"].setText(str(cohort.root / "features"))
    train.paths["omics"].setText(str(cohort.root / "omics.csv"))
    train.paths["out"].setText(str(tmp / "train_run"))
    train.method.setCurrentText("baselines")
    train.task.setCurrentText("survival")
    train.folds.setValue(3)
    train.epochs.setValue(8)
    train.lr.setValue(1e-3)
    train.device.setCurrentText("cpu")
    train.threads.setValue(1)
    train.start()
    while not train.run_btn.isEnabled():
        app.processEvents()
    app.processEvents()
    viewer.window.screenshot(str(HERE / "train_dock.png"), canvas_only=False)
    viewer.close()


def image_cohort(tmp: Path):
    """A 14-case synthetic image cohort with 20x + 10x hed-texture features."""
    from types import SimpleNamespace

    from histokd_core.features import extract_slide, get_encoder
    from histokd_core.synthetic import make_synthetic_cohort

    root = tmp / "image_cohort"
    if (root / "cohort.csv").is_file() and (tmp / "features").is_dir():  # --work: reuse it
        return SimpleNamespace(slides={p.stem: p for p in sorted((root / "slides").glob("*.tif"))},
                               cohort_csv=root / "cohort.csv", omics_csv=root / "omics.csv",
                               gene_sets_path=root / "gene_sets.gmt")
    cohort = make_synthetic_cohort(tmp / "image_cohort", n_cases=14, slide_size=(2048, 2048), seed=3,
                                   workers=1, multi_slide_fraction=0.0, planted_fraction=0.4)
    encoder = get_encoder("hed-texture", device="cpu")
    for path in cohort.slides.values():
        extract_slide(path, tmp / "features", encoder, magnifications=("20x", "10x"),
                      num_workers=0, min_tissue=0.1)
    return cohort


def train_student(cohort, tmp: Path, method: str, config: dict, task: str) -> Path:
    """Train ``method`` on fold 0 of ``cohort`` for a few epochs; returns the student checkpoint."""
    from histokd_core.dataset import CohortData

    data = CohortData(cohort.cohort_csv, tmp / "features", omics=cohort.omics_csv,
                      gene_sets=cohort.gene_sets_path, task=task,
                      label_column="label" if task == "classification" else None,
                      n_folds=3, n_bins=2, seed=0)
    out = tmp / f"run_{method}"
    if (out / "fold_0" / "student.safetensors").is_file():  # --work: reuse the trained model
        return out / "fold_0" / "student.safetensors"
    run_cv(method, config, data, out,
           TrainConfig(epochs=4, lr=1e-3, device="cpu", num_threads=1), folds=[0])
    return out / "fold_0" / "student.safetensors"


def dock_viewer(slide_path: Path, checkpoint: Path, tmp: Path, mpp: float | None = None, height: int = 1000):
    """A shown viewer with a real slide opened by the plugin reader and the Analyse dock filled for
    "extract now" (``mpp`` entered in the dock when the file has none), not yet run."""
    import napari

    from napari_histokd._reader import read_slides
    from napari_histokd._widgets.analyse import AnalyseWidget

    viewer = napari.Viewer(show=True)
    viewer.window.resize(1500, height)
    d, k, _ = read_slides(str(slide_path))[0]
    viewer.add_image(d, **k)
    viewer.canvas.overlays.scale_bar.visible = True
    analyse = AnalyseWidget(viewer)
    viewer.window.add_dock_widget(analyse, name="Analyse slide")
    analyse.checkpoint.setText(str(checkpoint))
    analyse.extract_now.setChecked(True)
    analyse.extract_to.setText(str(tmp / "real_features"))
    analyse.device.setCurrentText("cpu")
    if mpp is not None:
        analyse.mpp.setValue(mpp)
    return viewer, analyse


def run_dock(viewer, analyse) -> None:
    """Press Analyse and wait for the overlays; the view then shows the whole slide."""
    from qtpy.QtWidgets import QApplication

    if analyse.start() is None:
        raise RuntimeError(analyse.status.text())
    app = QApplication.instance()
    while not analyse.run_btn.isEnabled():
        app.processEvents()
    if analyse.analysis is None:
        raise RuntimeError(analyse.status.text())
    viewer.reset_view()
    app.processEvents()


def analysed_viewer(slide_path: Path, checkpoint: Path, tmp: Path, mpp: float | None = None,
                    height: int = 1000):
    """:func:`dock_viewer`, then the Analyse dock run."""
    viewer, analyse = dock_viewer(slide_path, checkpoint, tmp, mpp, height)
    run_dock(viewer, analyse)
    return viewer, analyse


def shoot(viewer, name: str) -> None:
    from qtpy.QtWidgets import QApplication

    for _ in range(5):
        QApplication.instance().processEvents()
    # no flash: its colorize effect lingers ~0.5 s and greys a second shot of the same window
    viewer.window.screenshot(str(HERE / name), canvas_only=False, flash=False)


def amkd_screenshots(cohort, tmp: Path) -> None:
    """analyse_attention.png (TCGA, mpp entered, attention with its colour bar and top patches),
    analyse_pathway.png (CMU, top pathway map and the ranked list) and export_regions.png."""
    from napari_histokd._widgets.export import ExportWidget

    ckpt = train_student(cohort, tmp, "amkd", AMKD_CONFIG, "survival")
    viewer, analyse = analysed_viewer(TCGA, ckpt, tmp, mpp=TCGA_MPP)
    analyse.show_map("attention")
    analyse.top_list.setCurrentRow(0)
    viewer.reset_view()
    shoot(viewer, "analyse_attention.png")
    viewer.close()

    viewer, analyse = analysed_viewer(CMU, ckpt, tmp)
    analyse.pathways.setCurrentRow(0)
    viewer.layers.selection.active = analyse.layers["pathway"]
    analyse.scroll.ensureWidgetVisible(analyse.pathways, 0, 120)  # the dock scrolled to the ranked list
    shoot(viewer, "analyse_pathway.png")

    export = ExportWidget(viewer)
    viewer.window.add_dock_widget(export, name="Export")
    analyse.show_map("attention")
    export.heatmap.setCurrentText(analyse.layers["attention"].name)
    export.set_quantile()
    (tmp / "regions.geojson").unlink(missing_ok=True)  # --work: never stop at "replace?"
    export.out.setText(str(tmp / "regions.geojson"))
    export.export_regions()
    analyse.layers["top_patches"].visible = False  # the exported regions' outlines alone (also cyan)
    shoot(viewer, "export_regions.png")
    viewer.close()


def clusters_screenshot(cohort, tmp: Path) -> None:
    """analyse_clusters.png: subspace student's tumour and TME cluster maps on the CMU slide side
    by side (grid view, the slide under each) + the legend with colour swatches."""
    ckpt = train_student(cohort, tmp, "subspace", {"dim": 32, "heads": 2, "n_points": 6,
                                                   "warmup_epochs": 1, "baselines": ()},
                         "classification")
    viewer, analyse = analysed_viewer(CMU, ckpt, tmp)
    analyse.show_map("clusters:tumor")
    maps = [analyse.layers["clusters:tumor"], analyse.layers["clusters:tme"]]
    keep = {viewer.layers[0], *maps}
    for layer in [lyr for lyr in viewer.layers if lyr not in keep]:
        viewer.layers.remove(layer)
    slide = viewer.layers[0]
    copy = viewer.add_image(slide.data, name=f"{slide.name} ", scale=slide.scale,
                            translate=slide.translate, units=slide.units, rgb=slide.rgb,
                            multiscale=slide.multiscale)
    viewer.layers.move(viewer.layers.index(maps[0]), len(viewer.layers))
    for layer in maps:
        layer.opacity = 0.6
        layer.visible = True
    viewer.layers.selection.active = maps[0]
    analyse.scroll.ensureWidgetVisible(analyse.clusters_legend)  # the dock scrolled to the legend
    if list(viewer.layers) != [slide, maps[1], copy, maps[0]]:  # grid: tumour left, TME right
        raise RuntimeError(f"unexpected layer order: {[lyr.name for lyr in viewer.layers]}")
    viewer.canvas.grid.stride = 2
    viewer.canvas.grid.enabled = True
    viewer.reset_view()
    shoot(viewer, "analyse_clusters.png")
    viewer.close()


def memory_screenshot(cohort, tmp: Path) -> None:
    """analyse_memory.png: MoMKD student's memory component C+0 on the TCGA slide, its colour bar
    and its ranked top patches."""
    ckpt = train_student(cohort, tmp, "momkd", {"n_components": 4, "wsi_dim": 32, "omics_dim": 32,
                                                "shared_dim": 16, "cls_hidden": 16,
                                                "compare_memory_updates": False, "baselines": ()},
                         "classification")
    viewer, analyse = analysed_viewer(TCGA, ckpt, tmp, mpp=TCGA_MPP)
    analyse.component.setCurrentIndex(0)
    analyse.show_component(0)
    viewer.layers.selection.active = analyse.layers["memory"]
    analyse.scroll.ensureWidgetVisible(analyse.component)  # the dock scrolled to the selector
    shoot(viewer, "analyse_memory.png")
    viewer.close()


def fine_screenshot(cohort, tmp: Path) -> None:
    """analyse_fine.png: the AMKD student's attention on the TCGA frozen section as a fine map
    (overlapping patches, stride patch/2, averaged per pixel), zoomed on the tissue's upper right
    edge."""
    ckpt = train_student(cohort, tmp, "amkd", AMKD_CONFIG, "survival")
    viewer, analyse = dock_viewer(TCGA, ckpt, tmp, mpp=TCGA_MPP)
    analyse.fine.setCurrentIndex(analyse.fine.findData(2))
    run_dock(viewer, analyse)
    viewer.layers.selection.active = analyse.layers["fine"]
    (y0, x0), (y1, x1) = viewer.layers[0].extent.world[:, -2:]  # the tissue's upper right edge
    viewer.camera.center = (y0 + 0.3 * (y1 - y0), x0 + 0.75 * (x1 - x0))
    viewer.camera.zoom *= 2.5
    shoot(viewer, "analyse_fine.png")
    viewer.close()


def cohort_screenshot(cohort, tmp: Path) -> None:
    """analyse_cohort.png: "all slides of this run" (every slide of the synthetic image cohort
    through the AMKD run, its summary and output folder), then one slide analysed on the run's
    cohort-wide colour scale."""
    from qtpy.QtWidgets import QApplication

    ckpt = train_student(cohort, tmp, "amkd", AMKD_CONFIG, "survival")
    slide = sorted((Path(cohort.cohort_csv).parent / "slides").glob("*.tif"))[0]
    viewer, analyse = dock_viewer(slide, ckpt, tmp, height=1150)
    analyse.extract_now.setChecked(False)
    analyse.features.setText(str(tmp / "features"))
    analyse.show_cohort_maps()
    panel = analyse.cohort_maps
    panel.cohort.setText(str(cohort.cohort_csv))
    shutil.rmtree(tmp / "cohort_maps", ignore_errors=True)  # --work: predict afresh, not "already done"
    panel.maps.setText(str(tmp / "cohort_maps"))
    panel.workers.setValue(1)
    if panel.start() is None:
        raise RuntimeError(panel.status.text())
    app = QApplication.instance()
    while not panel.run_btn.isEnabled():
        app.processEvents()
    if panel.result is None:
        raise RuntimeError(panel.status.text())
    analyse.scale_mode.setCurrentText("cohort")
    run_dock(viewer, analyse)
    analyse.scroll.ensureWidgetVisible(panel.output)  # the dock scrolled to the summary
    shoot(viewer, "analyse_cohort.png")
    viewer.close()


def contribution_screenshot(cohort, tmp: Path) -> None:
    """analyse_contribution.png: the distilled linear AMKD student (stage ``linear_student`` of the
    same run) on a synthetic slide its fold held out: each patch's risk contribution, where the
    planted tumour region raises the risk and the immune region lowers it; and
    analyse_linear_pathway.png: the same student's top-ranked pathway map (its slide-only pathway
    head) with the ranked list."""
    import pandas as pd

    ckpt = train_student(cohort, tmp, "amkd", AMKD_CONFIG, "survival").with_name(
        "linear_student.safetensors")
    pred = pd.read_csv(ckpt.parent / "predictions.csv", dtype={"case_id": str})
    table = pd.read_csv(cohort.cohort_csv, dtype={"case_id": str, "slide_id": str})
    held = set(pred.loc[pred["model"] == "linear_student", "case_id"])
    slide_id = table.loc[table["case_id"].isin(held), "slide_id"].iloc[0]
    slide = Path(cohort.cohort_csv).parent / "slides" / f"{slide_id}.tif"
    viewer, analyse = dock_viewer(slide, ckpt, tmp)
    analyse.extract_now.setChecked(False)
    analyse.features.setText(str(tmp / "features"))
    run_dock(viewer, analyse)
    analyse.show_map("contribution")
    viewer.layers.selection.active = analyse.layers["contribution"]
    shoot(viewer, "analyse_contribution.png")
    analyse.pathways.setCurrentRow(0)
    viewer.layers.selection.active = analyse.layers["pathway"]
    analyse.scroll.ensureWidgetVisible(analyse.pathways, 0, 120)
    shoot(viewer, "analyse_linear_pathway.png")
    viewer.close()


METHOD_SHOTS = {"amkd": amkd_screenshots, "clusters": clusters_screenshot,
                "memory": memory_screenshot, "fine": fine_screenshot, "cohort": cohort_screenshot,
                "contribution": contribution_screenshot}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=["train", *METHOD_SHOTS],
                        help="screenshots to make (default: all)")
    parser.add_argument("--work", type=Path, help="reuse this folder's cohort, features and models")
    args = parser.parse_args(argv)
    only = set(args.only or ["train", *METHOD_SHOTS])
    tmp = args.work or Path(tempfile.mkdtemp())
    if "train" in only:
        train_screenshot(tmp)
    if only & set(METHOD_SHOTS):
        cohort = image_cohort(tmp)
        for name, shot in METHOD_SHOTS.items():
            if name in only:
                shot(cohort, tmp)


if __name__ == "__main__":
    main()
