"""Maps checked against the truth of a planted synthetic cohort (issue 15, point 7).

For each seed: a synthetic image cohort (``make_synthetic_cohort``: real pyramidal slides whose
planted ``tumor`` region raises and ``immune`` region lowers the risk), features of every slide
(``--encoder``, 20x, 256 px), a cross-validated AMKD run (teacher -> student) and, with
``--subspace``, a subspace-student run. Then, for every slide of every fold's *test* cases, with
that fold's student (``histokd_core.explain.truth``):

1. **attention**: pixel AUROC of the student's attention (overlap-averaged per pixel) against the
   mask of every planted region (tumour and immune both drive the outcome);
2. **driver pathway maps**: pixel AUROC of the map of the best-ranked planted pathway of each
   factor against that factor's region (factor 0 -> tumour, factor 1 -> immune);
3. **ranking**: share of (driver, noise) pathway pairs with the driver ranked above the noise
   pathway by ``|score|`` (1 = every planted pathway above every noise pathway);
4. **linear student's risk contribution** (the ``linear_student`` stage of the AMKD run and its
   Cox-only ablation ``linear_student_no_kd``; ``histokd_core.explain.truth.contribution_aurocs``):
   pixel AUROC of each patch's contribution against the risk-raising tumour region, of minus it
   against the protective immune region, and of ``|c - median|`` against every planted region;
   and for ``linear_student``'s pathway head (signed maps: each patch's contribution to the
   predicted pathway activity) measures 2 and 3 as for the paper's student;
5. **clusters** (``--subspace``): adjusted Rand index of the tumour and TME cluster maps against
   the planted region type under each patch.

``--fine`` also extracts overlapping features (stride = patch / 2) of each test slide and scores
the fine attention map the same way. ``--feature`` replaces the image cohort by the feature-level
planted cohort of ``tests/test_truth.py`` (48 cases, 48 patches of 16 features, planted patch
clusters; 2 folds, 8 epochs, lr 1e-3 unless given) and scores the student's attention and the
linear students' contributions against the planted patches (factor 0 risk-raising, factor 1
protective; ``--local-factors 0``: every factor sets the share of its planted patches, as the
image cohort's factors set their regions' areas). Prints mean +- standard error over slides (and
per seed).

Usage: ``nice python bench/bench_truth.py --out /tmp/truth [--cases 40] [--slide-size 2048]
[--folds 3] [--epochs 15] [--seeds 0 1] [--subspace] [--fine] [--feature]``. Every step is
resumable.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from histokd_core.explain.truth import (
    FACTOR_KINDS,
    contribution_aurocs,
    pixel_auroc,
    ranking_auroc,
    region_ari,
)
from histokd_core.omics.gene_sets import read_gene_sets
from histokd_core.omics.subspaces import DEFAULT_TME_SETS, DEFAULT_TUMOR_SETS
from histokd_core.synthetic.slides import PlantedRegion

log = logging.getLogger("bench_truth")


def mean_se(values) -> str:
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    if v.size == 0:
        return "n/a"
    se = v.std(ddof=1) / np.sqrt(v.size) if v.size > 1 else float("nan")
    return f"{v.mean():.3f} +- {se:.3f} (n={v.size})"


def build(seed_dir: Path, args, seed: int) -> Path:
    from histokd_core.features import extract_slide, get_encoder
    from histokd_core.synthetic.cohort import make_synthetic_cohort

    data = seed_dir / "data"
    if not (data / "cohort.csv").is_file():
        t = time.perf_counter()
        make_synthetic_cohort(data, n_cases=args.cases, slide_size=(args.slide_size,) * 2,
                              seed=seed, workers=1)
        log.info("seed %d: cohort written in %.0f s", seed, time.perf_counter() - t)
    slides = sorted((data / "slides").glob("*.tif"))
    done = {p.stem for p in (seed_dir / "features").glob("*.zarr")}
    if done >= {s.stem for s in slides}:
        return data
    encoder = get_encoder(args.encoder, device="cpu")
    t = time.perf_counter()
    for slide in slides:
        extract_slide(slide, seed_dir / "features", encoder, magnifications=("20x",),
                      num_workers=0)
    log.info("seed %d: features in %.0f s", seed, time.perf_counter() - t)
    return data


def train(seed_dir: Path, data: Path, method: str, args, seed: int,
          features: Path | None = None) -> Path:
    from histokd_core.workflows import train_cohort

    run = seed_dir / f"run_{method}"
    if (run / "metrics.json").is_file():
        return run
    t = time.perf_counter()
    train_cohort(method, data / "cohort.csv", features or seed_dir / "features", run,
                 omics=data / "omics.csv", gene_sets=data / "gene_sets.gmt",
                 n_folds=args.folds, seed=seed, epochs=args.epochs, lr=args.lr, device="cpu",
                 threads=1, resume=run.exists())
    log.info("seed %d: %s trained in %.0f s", seed, method, time.perf_counter() - t)
    return run


def test_slides(run: Path, data: Path, stage: str):
    """(fold, slide_id) of every test case of every fold."""
    cohort = pd.read_csv(data / "cohort.csv", dtype={"case_id": str, "slide_id": str})
    yield from _held_out(run, cohort, stage)


def _held_out(run: Path, cohort: pd.DataFrame, stage: str):
    for fold_dir in sorted(run.glob("fold_*")):
        pred = pd.read_csv(fold_dir / "predictions.csv", dtype={"case_id": str})
        cases = set(pred.loc[pred["model"] == stage, "case_id"])
        for slide_id in cohort.loc[cohort["case_id"].isin(cases), "slide_id"]:
            yield fold_dir, slide_id


def regions_of(data: Path) -> dict[str, list[PlantedRegion]]:
    table = pd.read_csv(data / "regions.csv", dtype={"slide_id": str})
    out: dict[str, list[PlantedRegion]] = {}
    for r in table.itertuples(index=False):
        out.setdefault(r.slide_id, []).append(
            PlantedRegion(r.kind, int(r.y0), int(r.x0), int(r.y1), int(r.x1), float(r.intensity)))
    return out


def planted_pathways(data: Path) -> tuple[dict[int, list[str]], list[str]]:
    """The planted driver pathways of each factor (0: tumour sets, 1: TME sets) and the noise
    pathways of a synthetic cohort's gene sets."""
    sets = list(read_gene_sets(data / "gene_sets.gmt"))
    return ({0: [s for s in sets if s in DEFAULT_TUMOR_SETS],
             1: [s for s in sets if s in DEFAULT_TME_SETS]},
            [s for s in sets if s.startswith("NOISE_PATHWAY")])


def pathway_truth(expl, drivers: dict[int, list[str]], noise: list[str], reg,
                  dims: tuple[int, int]) -> dict[str, float]:
    """Pixel AUROC of the best-ranked (``|score|``) driver pathway's map of each factor against
    that factor's region (NaN when no driver has a map) and the ranking AUROC of drivers over
    noise pathways, for one slide's explanation."""
    kw = {"patch_size": expl.patch_size, "slide_dimensions": dims}
    out = {}
    for factor in (0, 1):
        mapped = [p for p in sorted(drivers[factor], key=lambda p: -abs(expl.pathway_scores[p]))
                  if p in expl.pathway_maps]
        out[f"pathway factor {factor} ({FACTOR_KINDS[factor]})"] = (
            pixel_auroc(expl.coords, expl.pathway_maps[mapped[0]], regions=reg,
                        kinds=[FACTOR_KINDS[factor]], **kw) if mapped else np.nan)
    out["ranking"] = ranking_auroc(expl.pathway_scores, drivers[0] + drivers[1], noise)
    return out


def score_amkd(seed_dir: Path, data: Path, run: Path, args) -> dict[str, list[float]]:
    from histokd_core.workflows.inference import explain_bag, load_slide_model, read_slide_bag

    drivers, noise = planted_pathways(data)
    regions = regions_of(data)
    dims = (args.slide_size, args.slide_size)
    out: dict[str, list[float]] = {"attention": [], "pathway factor 0 (tumor)": [],
                                   "pathway factor 1 (immune)": [], "ranking": []}
    if args.fine:
        out["fine attention (stride P/2)"] = []
    for fold_dir, slide_id in test_slides(run, data, "student"):
        model, meta = load_slide_model(fold_dir / "student.safetensors", torch.device("cpu"))
        bag, _ = read_slide_bag(seed_dir / "features", slide_id, meta)
        expl = explain_bag(model, bag, torch.device("cpu"))
        reg = regions.get(slide_id, [])
        kw = {"patch_size": expl.patch_size, "slide_dimensions": dims}
        out["attention"].append(pixel_auroc(expl.coords, expl.attention, regions=reg, **kw))
        for key, v in pathway_truth(expl, drivers, noise, reg, dims).items():
            out[key].append(v)
        if args.fine:
            from histokd_core.workflows.fine_maps import fine_maps_slide

            res = fine_maps_slide(fold_dir / "student.safetensors", data / "slides" / f"{slide_id}.tif",
                                  seed_dir / "fine" / fold_dir.name, stride_div=2, device="cpu",
                                  num_workers=0, mask_glass=False)
            e = res.explanation
            out["fine attention (stride P/2)"].append(
                pixel_auroc(e.coords, e.attention, regions=reg, **kw))
    return out


LINEAR_STAGES = ("linear_student", "linear_student_no_kd")


def score_contributions(features: Path, data: Path, run: Path,
                        truth) -> dict[str, list[float]]:
    """Contribution AUROCs of both linear students on every held-out slide; ``truth(slide_id,
    expl)`` gives ``(regions, slide_dimensions)``."""
    from histokd_core.workflows.inference import explain_bag, load_slide_model, read_slide_bag

    out: dict[str, list[float]] = {}
    for stage in LINEAR_STAGES:
        for fold_dir, slide_id in test_slides(run, data, stage):
            model, meta = load_slide_model(fold_dir / f"{stage}.safetensors", torch.device("cpu"))
            bag, _ = read_slide_bag(features, slide_id, meta)
            expl = explain_bag(model, bag, torch.device("cpu"))
            reg, dims = truth(slide_id, expl)
            for key, v in contribution_aurocs(expl.coords, expl.contribution, expl.patch_size,
                                              dims, reg).items():
                out.setdefault(f"{stage} contribution {key}", []).append(v)
            if expl.pathway_maps:  # the distilled stage's pathway head
                for key, v in pathway_truth(expl, *planted_pathways(data), reg, dims).items():
                    out.setdefault(f"{stage} {key}", []).append(v)
    return out


def feature_seed(seed_dir: Path, args, seed: int) -> dict[str, list[float]]:
    """The planted feature cohort of ``tests/test_truth.py``: student attention and the linear
    students' contributions against the planted patches."""
    from histokd_core.synthetic.cohort import make_feature_cohort
    from histokd_core.workflows.inference import explain_bag, load_slide_model, read_slide_bag

    data = seed_dir / "cohort"
    if not (data / "cohort.csv").is_file():
        make_feature_cohort(data, n_cases=args.cases, n_patches=48, feat_dim=16, seed=seed,
                            with_10x=False, histology_signal=2.5, histology_noise=0.5,
                            multi_slide_fraction=0.0, local_factors=args.local_factors,
                            overwrite=data.exists())
    planted_table = pd.read_csv(data / "planted.csv", dtype={"slide_id": str})
    run = train(seed_dir, data, "amkd", args, seed, features=data / "features")

    def truth(slide_id: str, expl):
        coords = expl.coords
        rows = planted_table[planted_table["slide_id"] == slide_id]
        factor = dict(zip(zip(rows["x"], rows["y"]), rows["factor"]))
        reg = [PlantedRegion(FACTOR_KINDS[f], int(y), int(x), int(y) + expl.patch_size,
                             int(x) + expl.patch_size)
               for (x, y) in coords if (f := int(factor.get((int(x), int(y)), -1))) >= 0]
        return reg, tuple(int(v) for v in coords.max(0) + expl.patch_size)

    out = score_contributions(data / "features", data, run, truth)
    out["student attention (any planted)"] = []
    for fold_dir, slide_id in test_slides(run, data, "student"):
        model, meta = load_slide_model(fold_dir / "student.safetensors", torch.device("cpu"))
        bag, _ = read_slide_bag(data / "features", slide_id, meta)
        expl = explain_bag(model, bag, torch.device("cpu"))
        reg, dims = truth(slide_id, expl)
        out["student attention (any planted)"].append(
            pixel_auroc(expl.coords, expl.attention, expl.patch_size, dims, reg))
    return out


def score_subspace(seed_dir: Path, data: Path, run: Path) -> dict[str, list[float]]:
    from histokd_core.workflows.inference import explain_bag, load_slide_model, read_slide_bag

    regions = regions_of(data)
    out: dict[str, list[float]] = {"ARI tumor clusters": [], "ARI tme clusters": []}
    for fold_dir, slide_id in test_slides(run, data, "student"):
        model, meta = load_slide_model(fold_dir / "student.safetensors", torch.device("cpu"))
        bag, _ = read_slide_bag(seed_dir / "features", slide_id, meta)
        expl = explain_bag(model, bag, torch.device("cpu"))
        for name in ("tumor", "tme"):
            out[f"ARI {name} clusters"].append(
                region_ari(expl.clusters[name], expl.coords, expl.patch_size,
                           regions.get(slide_id, [])))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--cases", type=int, default=40)
    ap.add_argument("--slide-size", type=int, default=2048)
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--encoder", default="hed-texture")
    ap.add_argument("--subspace", action="store_true", help="also train subspace (cluster ARI)")
    ap.add_argument("--fine", action="store_true", help="also score fine attention maps")
    ap.add_argument("--feature", action="store_true",
                    help="the planted feature cohort of tests/test_truth.py instead of images")
    ap.add_argument("--local-factors", type=int, default=1,
                    help="--feature: factors shown only as a shift of their patches (1, the "
                    "default cohort); 0 = every factor sets its planted share, as the image "
                    "cohort's region areas do")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    pooled: dict[str, list[float]] = {}
    for seed in args.seeds:
        seed_dir = args.out / f"seed{seed}"
        if args.feature:
            scores = feature_seed(seed_dir, args, seed)
            for key, vals in scores.items():
                print(f"seed {seed} {key:<45} {mean_se(vals)}", flush=True)
                pooled.setdefault(key, []).extend(vals)
            continue
        data = build(seed_dir, args, seed)
        run = train(seed_dir, data, "amkd", args, seed)
        scores = score_amkd(seed_dir, data, run, args)
        regions = regions_of(data)
        dims = (args.slide_size, args.slide_size)
        scores |= score_contributions(seed_dir / "features", data, run,
                                      lambda slide_id, expl: (regions.get(slide_id, []), dims))
        if args.subspace:
            scores |= score_subspace(seed_dir, data, train(seed_dir, data, "subspace", args, seed))
        for key, vals in scores.items():
            print(f"seed {seed} {key:<45} {mean_se(vals)}", flush=True)
            pooled.setdefault(key, []).extend(vals)
    what = ("feature cohort" if args.feature
            else f"{args.slide_size} px slides, encoder {args.encoder}")
    print(f"\nall seeds ({args.cases} cases, {what}, {args.folds} folds, {args.epochs} epochs); "
          "test slides of every fold:")
    for key, vals in pooled.items():
        print(f"  {key:<45} {mean_se(vals)}")


if __name__ == "__main__":
    main()
