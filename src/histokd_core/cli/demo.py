"""``histokd demo``: the whole pipeline on the embedded synthetic cohort.

synthetic cohort (real pyramidal slides with planted regions, omics, survival) -> tissue mask and
patch grid -> default patch features (EfficientNet-Lite0, shipped weights) -> AMKD
cross-validation (teacher, distilled student, ablation and baselines) -> a side-by-side table of
test C-indices with the paired difference of the distilled student against the same student
without a teacher and against ABMIL, a KM plot, and one test slide's attention and top-pathway
heatmaps as PNG overlays.

Every step is resumable: running the command again reuses the cohort, skips slides whose
features are complete and resumes the cross-validation where it stopped.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

log = logging.getLogger("histokd.demo")


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "demo",
        help="run the full pipeline on a synthetic cohort (slides -> features -> AMKD -> overlays)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default="histokd-demo", help="output folder (default: %(default)s)")
    p.add_argument("--cases", type=int, default=64, help="synthetic cases (default: %(default)s)")
    p.add_argument("--slide-size", type=int, default=2048,
                   help="slide side in level-0 px at 0.5 um/px (default: %(default)s)")
    p.add_argument("--encoder", default="efficientnet-lite0",
                   help="patch encoder spec (default: %(default)s; 'hed-texture' is faster)")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds (default: 5)")
    p.add_argument("--epochs", type=int, default=20, help="max epochs per model (default: 20)")
    p.add_argument("--lr", type=float, default=5e-4, help="Adam learning rate (default: 5e-4)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2, help="tile-reading processes (default: 2)")
    return p


def run(args: argparse.Namespace) -> int:
    from histokd_core.features import extract_slide, get_encoder
    from histokd_core.synthetic.cohort import make_synthetic_cohort

    out = Path(args.out)
    t0 = time.perf_counter()
    data_dir = out / "data"
    if (data_dir / "cohort.csv").is_file():
        log.info("[1/5] reusing the synthetic cohort in %s", data_dir)
    else:
        log.info("[1/5] writing a synthetic cohort of %d cases (%d px slides) to %s",
                 args.cases, args.slide_size, data_dir)
        make_synthetic_cohort(data_dir, n_cases=args.cases,
                              slide_size=(args.slide_size, args.slide_size), seed=args.seed)
    slides = sorted((data_dir / "slides").glob("*.tif"))

    log.info("[2/5] tiling + %s features for %d slides (20x, 256 px patches)",
             args.encoder, len(slides))
    encoder = get_encoder(args.encoder, device=args.device)
    features = out / "features"
    n_patches = 0
    for i, slide in enumerate(slides, 1):
        result = extract_slide(slide, features, encoder, magnifications=("20x",),
                               num_workers=args.workers)
        n_patches += sum(result.n_patches.values())
        log.info("  %3d/%d %s: %s (%d patches)", i, len(slides), result.slide_id, result.status,
                 sum(result.n_patches.values()))
    log.info("  %d patches encoded (%.0f s so far)", n_patches, time.perf_counter() - t0)

    metrics = _train(args, data_dir, features, out / "run")
    _print_table(metrics)
    log.info("[5/5] overlays")
    pngs = _overlays(out / "run", data_dir, features, out / "overlays")
    log.info("\nKaplan-Meier plot: %s\nmetrics: %s", out / "run" / "km.png",
             out / "run" / "metrics.json")
    for png in pngs:
        log.info("overlay: %s", png)
    log.info("demo finished in %.1f min", (time.perf_counter() - t0) / 60)
    return 0


def _train(args, data_dir: Path, features: Path, run_dir: Path) -> dict:
    from histokd_core.train import LoggingCallback
    from histokd_core.workflows import train_cohort

    log.info("[3/5] loading cohort, omics and pathway gene sets")
    log.info("[4/5] AMKD %d-fold cross-validation (teacher, student, student_no_kd, abmil, "
             "omics_only) -> %s", args.folds, run_dir)
    result = train_cohort("amkd", data_dir / "cohort.csv", features, run_dir,
                          omics=data_dir / "omics.csv", gene_sets=data_dir / "gene_sets.gmt",
                          n_folds=args.folds, seed=args.seed, epochs=args.epochs, lr=args.lr,
                          device=args.device, resume=run_dir.exists(),
                          callbacks=[LoggingCallback(log)])
    return result.metrics


_DEMO_ROWS = (  # model, what it reads
    ("teacher", "slides + omics"),
    ("student", "slides, distilled"),
    ("student_no_kd", "slides, no teacher"),
    ("linear_student", "slides, distilled"),
    ("linear_student_no_kd", "slides, no teacher"),
    ("abmil", "slides"),
    ("omics_only", "omics"),
)


def comparison_table(metrics: dict) -> str:
    """Teacher, distilled student, the same student without a teacher, the linear students, ABMIL
    and the omics-only model side by side (test C-index per fold, mean +- sd), then the paired
    differences of each distilled student against its ablation and ABMIL over folds (mean +-
    standard error, folds better) and what they say."""
    from histokd_core.train.results import paired_difference

    folds = metrics["folds"]
    rows = [(m, reads) for m, reads in _DEMO_ROWS if m in metrics["summary"]]
    width = max(len(m) for m, _ in rows) + 2
    lines = ["", f"test C-index over {len(folds)} folds (the same test cases for every model)",
             f"{'model':<{width}}{'reads':<20}{'mean +- sd':<16}"
             + "".join(f"fold {f['fold']:<3}" for f in folds)]
    for model, reads in rows:
        summary = metrics["summary"][model]
        per_fold = "".join(f"{f['test'][model]['c_index']:<8.3f}" if model in f["test"]
                           else f"{'-':<8}" for f in folds)
        lines.append(f"{model:<{width}}{reads:<20}"
                     f"{summary['c_index_mean']:.3f} +- {summary['c_index_std']:.3f}  {per_fold}")
    lines.append("\npaired difference over folds (mean +- standard error, folds better):")
    pairs = (("student", "student_no_kd"), ("student", "abmil"),
             ("linear_student", "linear_student_no_kd"), ("linear_student", "abmil"))
    pairs = [(m, r) for m, r in pairs if m in metrics["summary"] and r in metrics["summary"]]
    label_width = max((len(f"{m} - {r}") for m, r in pairs), default=0) + 1
    for model, reference in pairs:
        d = paired_difference(metrics, model, reference)
        if d["n"] < 2:
            verdict = "too few folds to tell"
        elif abs(d["mean"]) <= 2 * d["se"]:
            verdict = "no measurable difference (within 2 SE)"
        else:
            verdict = f"the distilled {model} is " + ("better" if d["mean"] > 0 else "worse")
        label = f"{model} - {reference}"
        lines.append(f"  {label:<{label_width}}{d['mean']:+.3f} +- {d['se']:.3f}   "
                     f"{d['better']}/{d['n']} folds better: {verdict}")
    return "\n".join(lines)


def _print_table(metrics: dict) -> None:
    log.info(comparison_table(metrics))


def _overlays(run_dir: Path, data_dir: Path, features: Path, out_dir: Path) -> list[Path]:
    """Attention and top-pathway heatmaps of one test slide of fold 0, over its thumbnail."""
    import pandas as pd

    from histokd_core.explain.render import overlay_png
    from histokd_core.slide import open_slide
    from histokd_core.workflows import analyse_slide

    predictions = pd.read_csv(run_dir / "fold_0" / "predictions.csv")
    student = predictions[predictions["model"] == "student"].sort_values("risk", ascending=False)
    cohort = pd.read_csv(data_dir / "cohort.csv")
    case_id = student["case_id"].iloc[0]
    slide_id = cohort.loc[cohort["case_id"] == case_id, "slide_id"].iloc[0]
    slide_path = data_dir / "slides" / f"{Path(str(slide_id)).stem}.tif"
    explanation = analyse_slide(run_dir / "fold_0" / "student.safetensors", features,
                                slide_id=slide_path.stem, device="cpu").explanation
    out_dir.mkdir(parents=True, exist_ok=True)
    with open_slide(slide_path) as slide:
        written = [overlay_png(slide, explanation.coords, explanation.attention,
                               explanation.patch_size, out_dir / "attention.png",
                               title=f"{slide_path.stem}: student attention")]
        ranked = sorted(explanation.pathway_scores, key=explanation.pathway_scores.get,
                        reverse=True)
        for name in ranked[:2]:
            written.append(overlay_png(slide, explanation.coords, explanation.pathway_maps[name],
                                       explanation.patch_size, out_dir / f"pathway_{name}.png",
                                       title=f"{slide_path.stem}: {name}"))
    return written
