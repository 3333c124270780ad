"""Regenerate the screenshots of docs/user-guide.md and docs/training.md (needs a display:
``xvfb-run -a .venv/bin/python docs/images/make_screenshots.py [--only NAME ...]``).

Everything shown is computed: a synthetic slide with a planted tumour region, an ABMIL model
trained here to find planted patches, the Analyse and Export docks, and the Train dock running
the baselines on a synthetic feature cohort. The method overlays (AMKD pathway heatmap, subspace
tumour/TME clusters, MoMKD memory components) come from tiny AMKD, subspace and MoMKD models
trained here on a synthetic image cohort (real pyramidal slides, ``hed-texture`` features).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from histokd_core.bag import Bag, DataInfo
from histokd_core.features.store import write_slide_features
from histokd_core.synthetic import PlantedRegion, write_synthetic_slide
from histokd_core.synthetic.cohort import make_feature_cohort
from histokd_core.train import TrainConfig, run_cv

HERE = Path(__file__).parent
MPP, P, H, W, D = 0.5, 256, 4096, 6144, 16
REGION = PlantedRegion("tumor", y0=1536, x0=3584, y1=2560, x1=5120)


def lattice():
    ys, xs = np.mgrid[0:H:P, 0:W:P]
    return np.stack([xs.ravel(), ys.ravel()], 1).astype(np.int64)


def feats(coords, box, rng, direction):
    x0, y0, x1, y1 = box
    f = rng.normal(size=(len(coords), D)).astype(np.float32)
    inside = (coords[:, 0] >= x0) & (coords[:, 0] < x1) & (coords[:, 1] >= y0) & (coords[:, 1] < y1)
    f[inside] += 3.0 * direction
    return f


def bags(n, seed, direction):
    rng, coords, out = np.random.default_rng(seed), lattice(), []
    for i in range(n):
        c0, r0 = rng.integers(0, W // P - 6), rng.integers(0, H // P - 4)
        box = (c0 * P, r0 * P, (c0 + 6) * P, (r0 + 4) * P) if i % 2 else (0, 0, 0, 0)
        out.append(Bag(f"c{seed}_{i}", torch.from_numpy(feats(coords, box, rng, direction)),
                       torch.from_numpy(coords), patch_size=P, label=i % 2))
    return out


def base_screenshots(tmp: Path) -> None:
    """analyse_attention.png, export_regions.png and train_dock.png."""
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_histokd._reader import read_slides
    from napari_histokd._widgets.analyse import AnalyseWidget
    from napari_histokd._widgets.export import ExportWidget
    from napari_histokd._widgets.train import TrainWidget

    slide = write_synthetic_slide(tmp / "slide.tif", (H, W), mpp=MPP, regions=[REGION], seed=1)
    direction = np.zeros(D, np.float32)
    direction[:4] = 1
    info = DataInfo(task="classification", feat_dim=D, n_classes=2, encoder_id="demo")
    parts = [bags(16, s, direction) for s in (1, 2)]
    data = SimpleNamespace(n_folds=1, fold=lambda i: SimpleNamespace(train=parts[0], val=parts[1][:8],
                                                                      test=parts[1][8:], info=info))
    run_cv("baselines", {"models": ["abmil"]}, data, tmp / "run",
           TrainConfig(epochs=6, lr=3e-3, batch_size=4, device="cpu", num_threads=1), folds=[0])
    coords = lattice()
    write_synthetic = feats(coords, (REGION.x0, REGION.y0, REGION.x1, REGION.y1), np.random.default_rng(9), direction)
    write_slide_features(tmp / "feats", "slide", "20x", write_synthetic, coords,
                         {"encoder_id": "demo", "patch_size_level0": P, "mpp": MPP})

    viewer = napari.Viewer(show=True)
    viewer.window.resize(1400, 900)
    d, k, _ = read_slides(str(slide.path))[0]
    viewer.add_image(d, **k)
    analyse = AnalyseWidget(viewer)
    viewer.window.add_dock_widget(analyse, name="Analyse slide")
    analyse.checkpoint.setText(str(tmp / "run" / "fold_0" / "abmil.safetensors"))
    analyse.features.setText(str(tmp / "feats"))
    analyse.slide_id.setText("slide")
    analyse.device.setCurrentText("cpu")
    analyse.start()
    app = QApplication.instance()
    while not analyse.run_btn.isEnabled() or analyse.analysis is None:
        app.processEvents()
    viewer.reset_view()
    app.processEvents()
    viewer.window.screenshot(str(HERE / "analyse_attention.png"), canvas_only=False)

    export = ExportWidget(viewer)
    viewer.window.add_dock_widget(export, name="Export")
    export.heatmap.setCurrentText(analyse.layers["attention"].name)
    export.set_quantile()
    export.out.setText(str(tmp / "regions.geojson"))
    export.export_regions()
    app.processEvents()
    viewer.window.screenshot(str(HERE / "export_regions.png"), canvas_only=False)
    viewer.close()

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
    from histokd_core.features import extract_slide, get_encoder
    from histokd_core.synthetic import make_synthetic_cohort

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
    run_cv(method, config, data, out,
           TrainConfig(epochs=4, lr=1e-3, device="cpu", num_threads=1), folds=[0])
    return out / "fold_0" / "student.safetensors"


def analysed_viewer(slide_path: Path, checkpoint: Path, features: Path):
    """A shown viewer with ``slide_path`` opened by the plugin reader and the Analyse dock run."""
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_histokd._reader import read_slides
    from napari_histokd._widgets.analyse import AnalyseWidget

    viewer = napari.Viewer(show=True)
    viewer.window.resize(1400, 900)
    d, k, _ = read_slides(str(slide_path))[0]
    viewer.add_image(d, **k)
    analyse = AnalyseWidget(viewer)
    viewer.window.add_dock_widget(analyse, name="Analyse slide")
    analyse.checkpoint.setText(str(checkpoint))
    analyse.features.setText(str(features))
    analyse.device.setCurrentText("cpu")
    analyse.start()
    app = QApplication.instance()
    while not analyse.run_btn.isEnabled() or analyse.analysis is None:
        app.processEvents()
    viewer.reset_view()
    app.processEvents()
    return viewer, analyse


def show_only(viewer, *layers) -> None:
    """Hide every layer except the slide (the bottom layer) and ``layers``; select the last one."""
    for layer in list(viewer.layers)[1:]:
        layer.visible = layer in layers
    viewer.layers.selection.active = layers[-1]


def pathway_screenshot(cohort, tmp: Path) -> None:
    """analyse_pathway.png: AMKD student's pathway-conditioned heatmap + ranked pathway list."""
    from qtpy.QtWidgets import QApplication

    ckpt = train_student(cohort, tmp, "amkd", {"dim": 32, "heads": 2, "dim_head": 16,
                                               "pathway_hidden": 32}, "survival")
    path = next(iter(cohort.slides.values()))
    viewer, analyse = analysed_viewer(path, ckpt, tmp / "features")
    analyse.pathways.setCurrentRow(0)
    show_only(viewer, analyse.layers["pathway"])
    QApplication.instance().processEvents()
    viewer.window.screenshot(str(HERE / "analyse_pathway.png"), canvas_only=False)
    viewer.close()


def clusters_screenshot(cohort, tmp: Path) -> None:
    """analyse_clusters.png: subspace student's tumour and TME cluster maps side by side (grid
    view, the slide under each) + the cluster-size legend."""
    from qtpy.QtWidgets import QApplication

    ckpt = train_student(cohort, tmp, "subspace", {"dim": 32, "heads": 2, "n_points": 6,
                                                   "warmup_epochs": 1, "baselines": ()},
                         "classification")
    path = next(iter(cohort.slides.values()))
    viewer, analyse = analysed_viewer(path, ckpt, tmp / "features")
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
    viewer.layers.selection.active = maps[0]
    if list(viewer.layers) != [slide, maps[1], copy, maps[0]]:  # grid: tumour left, TME right
        raise RuntimeError(f"unexpected layer order: {[lyr.name for lyr in viewer.layers]}")
    viewer.canvas.grid.stride = 2
    viewer.canvas.grid.enabled = True
    viewer.reset_view()
    QApplication.instance().processEvents()
    viewer.window.screenshot(str(HERE / "analyse_clusters.png"), canvas_only=False)
    viewer.close()


def memory_screenshot(cohort, tmp: Path) -> None:
    """analyse_memory.png: MoMKD student's memory-component activation + its top-3 patches."""
    from qtpy.QtWidgets import QApplication

    ckpt = train_student(cohort, tmp, "momkd", {"n_components": 4, "wsi_dim": 32, "omics_dim": 32,
                                                "shared_dim": 16, "cls_hidden": 16,
                                                "compare_memory_updates": False, "baselines": ()},
                         "classification")
    path = next(iter(cohort.slides.values()))
    viewer, analyse = analysed_viewer(path, ckpt, tmp / "features")
    show_only(viewer, analyse.layers["memory"], analyse.layers["top_patches"])
    analyse.component.setCurrentIndex(0)
    analyse.show_component(0)
    viewer.layers.selection.active = analyse.layers["memory"]
    QApplication.instance().processEvents()
    viewer.window.screenshot(str(HERE / "analyse_memory.png"), canvas_only=False)
    viewer.close()


METHOD_SHOTS = {"pathway": pathway_screenshot, "clusters": clusters_screenshot,
                "memory": memory_screenshot}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=["base", *METHOD_SHOTS],
                        help="screenshots to make (default: all)")
    only = set(parser.parse_args(argv).only or ["base", *METHOD_SHOTS])
    tmp = Path(tempfile.mkdtemp())
    if "base" in only:
        base_screenshots(tmp)
    if only & set(METHOD_SHOTS):
        cohort = image_cohort(tmp)
        for name, shot in METHOD_SHOTS.items():
            if name in only:
                shot(cohort, tmp)


if __name__ == "__main__":
    main()
