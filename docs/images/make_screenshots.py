"""Regenerate the screenshots of docs/user-guide.md and docs/training.md (needs a display:
``xvfb-run -a .venv/bin/python docs/images/make_screenshots.py``).

Everything shown is computed: a synthetic slide with a planted tumour region, an ABMIL model
trained here to find planted patches, the Analyse and Export docks, and the Train dock running
the baselines on a synthetic feature cohort.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from histokd_core.features.store import write_slide_features
from histokd_core.methods.base import Bag, DataInfo
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


def main() -> None:
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_histokd._reader import read_slides
    from napari_histokd._widgets.analyse import AnalyseWidget
    from napari_histokd._widgets.export import ExportWidget
    from napari_histokd._widgets.train import TrainWidget

    tmp = Path(tempfile.mkdtemp())
    slide = write_synthetic_slide(tmp / "slide.tif", (H, W), mpp=MPP, regions=[REGION], seed=1)
    direction = np.zeros(D, np.float32)
    direction[:4] = 1
    info = DataInfo(task="classification", feat_dim=D, n_classes=2, encoder_id="demo")
    parts = [bags(16, s, direction) for s in (1, 2)]
    data = SimpleNamespace(n_folds=1, fold=lambda i: SimpleNamespace(train=parts[0], val=parts[1][:8],
                                                                      test=parts[1][8:], info=info))
    run_cv("histokd_core.methods.baselines", {"models": ["abmil"]}, data, tmp / "run",
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
    train.method.setCurrentText("histokd_core.methods.baselines")
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


if __name__ == "__main__":
    main()
