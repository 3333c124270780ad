"""GUI benchmarks (needs a display: ``xvfb-run -a .venv/bin/python bench/bench_gui.py``).

1. Time from pressing "Analyse" to every overlay shown, for a 20 000-patch slide with
   precomputed features (d = 1024, ABMIL checkpoint, CPU).
2. GUI event-loop latency while the Train dock trains (thread mode, torch capped to 1 thread,
   and subprocess mode): a 10 ms QTimer records the gaps between its ticks.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch


def build_checkpoint(tmp: Path, d: int):
    from histokd_core.bag import Bag, DataInfo
    from histokd_core.train import TrainConfig, run_cv

    rng = np.random.default_rng(0)
    info = DataInfo(task="classification", feat_dim=d, n_classes=2, encoder_id="bench")

    def bag(i):
        f = rng.normal(size=(64, d)).astype(np.float32)
        f[:8, :4] += 3 * (i % 2)
        c = np.stack([np.arange(64) * 256, np.zeros(64)], 1).astype(np.int64)
        return Bag(f"b{i}", torch.from_numpy(f), torch.from_numpy(c), label=i % 2)

    bags = [bag(i) for i in range(24)]
    data = SimpleNamespace(n_folds=1, fold=lambda i: SimpleNamespace(train=bags[:16], val=bags[16:20],
                                                                      test=bags[20:], info=info))
    run_cv("baselines", {"models": ["abmil"]}, data, tmp / "run",
           TrainConfig(epochs=1, lr=1e-3, batch_size=4, device="cpu", num_threads=1), folds=[0])
    return tmp / "run" / "fold_0" / "abmil.safetensors"


def bench_analyse(tmp: Path, n_side=(125, 160), d=1024, repeats=2) -> list[float]:
    import dask.array as da
    import napari
    from qtpy.QtWidgets import QApplication

    from histokd_core.features.store import write_slide_features
    from napari_histokd._widgets.analyse import AnalyseWidget

    ckpt = build_checkpoint(tmp, d)
    rows, cols = n_side
    ys, xs = np.mgrid[0:rows, 0:cols] * 256
    coords = np.stack([xs.ravel(), ys.ravel()], 1).astype(np.int64)
    feats = np.random.default_rng(1).normal(size=(len(coords), d)).astype(np.float32)
    write_slide_features(tmp / "feats", "big", "20x", feats, coords, {"encoder_id": "bench", "patch_size_level0": 256})
    viewer = napari.Viewer(show=True)
    slide = da.zeros((rows * 256, cols * 256, 3), dtype=np.uint8, chunks=(4096, 4096, 3))
    viewer.add_image(slide, rgb=True, scale=(0.5, 0.5), name="big", metadata={"histokd_kind": "slide", "mpp": 0.5})
    w = AnalyseWidget(viewer)
    w.checkpoint.setText(str(ckpt))
    w.features.setText(str(tmp / "feats"))
    w.slide_id.setText("big")
    w.device.setCurrentText("cpu")
    app = QApplication.instance()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        w.start()
        while not w.run_btn.isEnabled():
            app.processEvents()
        app.processEvents()
        assert w.analysis is not None, w.status.text()
        times.append(time.perf_counter() - t0)
    viewer.close()
    return times


def bench_latency(tmp: Path, subprocess: bool) -> dict[str, float]:
    import napari
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from histokd_core.synthetic.cohort import make_feature_cohort
    from napari_histokd._widgets.train import TrainWidget

    root = tmp / f"cohort_{int(subprocess)}"
    c = make_feature_cohort(root, n_cases=60, n_patches=400, feat_dim=256, seed=0, with_10x=False)
    viewer = napari.Viewer(show=True)
    w = TrainWidget(viewer)
    w.paths["cohort"].setText(str(c.root / "cohort.csv"))
    w.paths["features"].setText(str(c.root / "features"))
    w.paths["omics"].setText(str(c.root / "omics.csv"))
    w.paths["out"].setText(str(tmp / f"run_{int(subprocess)}"))
    w.method.setCurrentText("baselines")
    w.task.setCurrentText("survival")
    w.folds.setValue(3)
    w.only_fold.setValue(0)
    w.epochs.setValue(6)
    w.lr.setValue(1e-3)
    w.device.setCurrentText("cpu")
    w.threads.setValue(1)
    w.subprocess.setChecked(subprocess)
    gaps, last = [], [time.perf_counter()]

    def tick():
        now = time.perf_counter()
        gaps.append(now - last[0])
        last[0] = now

    timer = QTimer()
    timer.timeout.connect(tick)
    app = QApplication.instance()
    t0 = time.perf_counter()
    w.start()
    timer.start(10)
    while not w.run_btn.isEnabled():
        app.processEvents()
        time.sleep(0.001)
    timer.stop()
    wall = time.perf_counter() - t0
    viewer.close()
    g = np.array(gaps[1:]) * 1000
    return {"wall_s": wall, "ticks": len(g), "median_ms": float(np.median(g)), "p99_ms": float(np.percentile(g, 99)),
            "max_ms": float(g.max()), "ok": w.metrics is not None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(2)
    tmp = Path(tempfile.mkdtemp())
    times = bench_analyse(tmp, repeats=args.repeats)
    print("| benchmark | value |")
    print("|---|---|")
    print(f"| Analyse -> overlays, 20 000 patches, d=1024, ABMIL, CPU (s) | "
          f"{', '.join(f'{t:.2f}' for t in times)} |")
    for sub in (False, True):
        r = bench_latency(tmp, sub)
        mode = "subprocess" if sub else "thread (1 torch thread)"
        print(f"| event-loop gap during training, {mode}: median / p99 / max (ms) | "
              f"{r['median_ms']:.1f} / {r['p99_ms']:.1f} / {r['max_ms']:.1f} (training {r['wall_s']:.1f} s, "
              f"{'ok' if r['ok'] else 'FAILED'}) |")


if __name__ == "__main__":
    main()
