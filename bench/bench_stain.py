"""Stain normalisation on a two-site synthetic cohort with a planted stain shift (issue 17).

A synthetic cohort (real pyramidal slides, planted regions driving survival) is split into two
sites by case; every slide of site B is re-stained with a Beer-Lambert stain shift
(:class:`histokd_core.synthetic.stain.StainShift`, ``--shift``). Patch features (EfficientNet-Lite0,
20x) are extracted four ways: ``oracle`` (site B's slides before the shift), ``none`` (shifted,
as read), ``macenko`` and ``reinhard`` (shifted, normalised to one reference fitted on the whole
cohort). For each feature set:

- **site separability** of the slide-mean features: cross-validated AUC of a logistic-regression
  site classifier (0.5 = the sites cannot be told apart), and the distance between the two
  site means in units of the within-site spread;
- **the student's between-site gap**: AMKD (teacher with omics, distilled student) is trained on
  site A only (5-fold CV within A: train/val/test) and every fold's student also scores all of
  site B. Gap = C-index on the held-out site-A test fold minus C-index on site B, per fold and
  seed; mean +- standard error over seeds x folds. Differences to ``none`` are paired (same
  folds and seeds).

The report adds the site-mean distance on the ``none`` set's scale (the first distance is in each
set's own within-site spread, which normalisation also shrinks), bootstrap standard errors of
the distance differences to ``none``, the paired difference of the student's C-index on site B,
and the patches per slide each site's tissue mask keeps.

Run (resumable; numbers go to docs/benchmarks.md). The design size, measured on the shared
2-core machine in about an hour (one set per process, one process at a time):
    for s in none oracle reinhard macenko; do OMP_NUM_THREADS=1 nice -n 10 python bench/bench_stain.py \
        --out /tmp/stain-bench80 --cases 80 --seeds 3 --folds 5 --sets $s; done
    python bench/bench_stain.py --out /tmp/stain-bench80 --seeds 3 --folds 5 --report
A shrunk run (``--cases 32 --folds 3 --encoder hed-texture``) is in docs/benchmarks.md too.
``bench/bench_stain_tiles.py`` diagnoses the normalisation patch by patch.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np

from histokd_core.methods import amkd

log = logging.getLogger("bench_stain")

# A trimmed AMKD method module for run_cv: the teacher and the distilled student only.
TASKS = amkd.TASKS
Config = amkd.Config


def stages(config):
    return [s for s in amkd.stages(config) if s.name in ("teacher", "student")]


FEATURE_SETS = ("oracle", "none", "macenko", "reinhard")
METHOD = "amkd-teacher-student"


def make_two_sites(out: Path, n_cases: int, shift: float, seed: int):
    """The cohort, its site table and the re-stained site-B slides (reused when present)."""
    import pandas as pd

    from histokd_core.synthetic.cohort import make_synthetic_cohort
    from histokd_core.synthetic.stain import StainShift, write_restained_slide

    data = out / "data"
    if not (data / "cohort.csv").is_file():
        make_synthetic_cohort(
            data, n_cases=n_cases, slide_size=(2048, 2048), seed=seed,
            histology_noise=0.5, planted_fraction=0.3, censoring=0.2, workers=1,
        )
    cohort = pd.read_csv(data / "cohort.csv")
    cases = sorted(cohort["case_id"].unique())
    rng = np.random.default_rng(seed)
    site_b = set(rng.permutation(cases)[: len(cases) // 2])
    sites = pd.DataFrame({"case_id": cases, "site": ["B" if c in site_b else "A" for c in cases]})
    sites.to_csv(out / "sites.csv", index=False)
    originals = {Path(str(s)).stem: data / "slides" / f"{Path(str(s)).stem}.tif"
                 for s in cohort["slide_id"]}
    case_of = {Path(str(s)).stem: c for s, c in zip(cohort["slide_id"], cohort["case_id"])}
    shifted_dir = out / "shifted"
    shifted_dir.mkdir(exist_ok=True)
    shifted = {}
    for sid, path in originals.items():
        if case_of[sid] in site_b:
            dst = shifted_dir / path.name
            if not dst.is_file():
                write_restained_slide(path, dst, StainShift.tilted(shift))
            shifted[sid] = dst
        else:
            shifted[sid] = path
    site_of_slide = {sid: ("B" if case_of[sid] in site_b else "A") for sid in originals}
    return data, sites, originals, shifted, site_of_slide


def extract_sets(out: Path, names, originals, shifted, site_of_slide, encoder_spec: str) -> dict[str, float]:
    """Extract the feature sets ``names`` (resumable); returns seconds per set (this run only)."""
    from histokd_core.features import extract_slide, get_encoder
    from histokd_core.features.stain import cohort_reference

    encoder = get_encoder(encoder_spec, device="cpu")
    seconds = {}
    plan = {"none": (shifted, None), "macenko": (shifted, "macenko"),
            "reinhard": (shifted, "reinhard"), "oracle": (originals, None)}
    order = [n for n in ("none", "macenko", "reinhard", "oracle") if n in names]
    for name in order:
        slides, method = plan[name]
        root = out / "features" / encoder_spec / name
        start = time.perf_counter()
        ref = cohort_reference(list(slides.values()), method, root) if method else None
        for sid, path in sorted(slides.items()):
            if name == "oracle" and site_of_slide[sid] == "A":  # identical to "none" for site A
                src = out / "features" / encoder_spec / "none" / f"{sid}.zarr"
                if not (root / f"{sid}.zarr").exists():
                    if not src.exists():
                        extract_slide(path, src.parent, encoder,
                                      magnifications=("20x",), num_workers=0)
                    root.mkdir(parents=True, exist_ok=True)
                    shutil.copytree(src, root / f"{sid}.zarr")
                continue
            extract_slide(path, root, encoder, magnifications=("20x",), num_workers=0, stain=ref)
        seconds[name] = time.perf_counter() - start
        log.info("features %s: %.0f s", name, seconds[name])
    return seconds


def slide_means(root: Path, slide_ids) -> np.ndarray:
    from histokd_core.features import open_features

    return np.stack([open_features(root, sid).feats("20x").mean(axis=0) for sid in slide_ids])


def site_separability(x: np.ndarray, site: np.ndarray, repeats: int = 5) -> dict[str, float]:
    """Site-classifier AUC (5-fold CV x repeats) and the normalised site-mean distance."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = (site == "B").astype(int)
    aucs = []
    for r in range(repeats):
        prob = np.zeros(len(y))
        for train, test in StratifiedKFold(5, shuffle=True, random_state=r).split(x, y):
            model = make_pipeline(StandardScaler(), PCA(10, random_state=r), LogisticRegression(max_iter=2000))
            model.fit(x[train], y[train])
            prob[test] = model.predict_proba(x[test])[:, 1]
        aucs.append(roc_auc_score(y, prob))
    return {"site_auc": float(np.mean(aucs)), "site_auc_se": float(np.std(aucs, ddof=1) / np.sqrt(repeats)),
            "mean_distance": own_spread_distance(x, y == 1)}


def student_gaps(out: Path, data: Path, feats: Path, sites, seeds, epochs: int, name: str,
                 tag: str, n_folds: int = 5) -> list[dict]:
    """Per (seed, fold): C-index of the student on site A's test fold and on all of site B."""
    import pandas as pd

    from histokd_core.cohort import Folds, load_cohort, make_folds
    from histokd_core.dataset import CohortData
    from histokd_core.survival import c_index
    from histokd_core.train import TrainConfig, run_cv

    cohort = pd.read_csv(data / "cohort.csv")
    site_of = dict(zip(sites["case_id"], sites["site"]))
    a_csv = out / f"cohort_site_a_{tag}_{name}.csv"
    cohort[cohort["case_id"].map(site_of) == "A"].to_csv(a_csv, index=False)
    b_cases = sorted(c for c, s in site_of.items() if s == "B")
    rows = []
    for seed in seeds:
        folds_a = make_folds(load_cohort(a_csv), n_folds=n_folds, seed=seed)
        extra = pd.DataFrame([{"fold": f, "case_id": c, "split": "test"}
                              for f in range(n_folds) for c in b_cases])
        folds = Folds(pd.concat([folds_a.assignments, extra], ignore_index=True))
        cohort_data = CohortData(data / "cohort.csv", feats, omics=data / "omics.csv",
                                 gene_sets=data / "gene_sets.gmt", folds=folds)
        run_dir = out / "runs" / tag / f"{name}_seed{seed}"
        config = TrainConfig(epochs=epochs, lr=5e-4, device="cpu", seed=seed)
        run_cv(METHOD, None, cohort_data, run_dir, config, resume=run_dir.exists())
        for fold in range(n_folds):
            pred = pd.read_csv(run_dir / f"fold_{fold}" / "predictions.csv")
            pred = pred[pred["model"] == "student"]
            pred["site"] = pred["case_id"].map(site_of)
            c = {s: c_index(g["time"].to_numpy(), g["risk"].to_numpy(), g["event"].to_numpy())
                 for s, g in pred.groupby("site")}
            rows.append({"features": name, "seed": seed, "fold": fold, "c_a": c["A"], "c_b": c["B"],
                         "gap": c["A"] - c["B"]})
    return rows


def mean_se(values) -> tuple[float, float]:
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v)))


def own_spread_distance(x: np.ndarray, b: np.ndarray) -> float:
    """Site-mean distance of slide-mean features ``x`` ``(n, d)`` (sites: ``b`` True = B) in units
    of the within-site spread, after z-scoring every feature on the whole set."""
    z = (x - x.mean(0)) / (x.std(0) + 1e-8)
    mu_a, mu_b = z[~b].mean(0), z[b].mean(0)
    within = np.sqrt(((z[~b] - mu_a) ** 2).sum(1).mean() / 2 + ((z[b] - mu_b) ** 2).sum(1).mean() / 2)
    return float(np.linalg.norm(mu_a - mu_b) / within)


def fixed_scale_distances(out: Path, encoder: str, names, n_boot: int = 200) -> dict[str, dict]:
    """Site-mean distances with standard errors of the paired differences to ``none``.

    ``none_scale``: distance between the two site means of the slide-mean features, every set
    centred on the ``none`` set's mean and divided by one number, the root-mean-square per-feature
    standard deviation of the ``none`` set (one unit for all rows; per-feature z-scores are not
    used because EfficientNet-Lite0 has near-constant features whose tiny ``none`` spread blows
    a normalised set's distance up). ``own``: :func:`own_spread_distance`. ``*_minus_none_se``:
    bootstrap over slides (resampled within each site, the same resample for every set).
    """
    import pandas as pd

    cohort = pd.read_csv(out / "data" / "cohort.csv")
    sites = pd.read_csv(out / "sites.csv")
    site_of = dict(zip(sites["case_id"], sites["site"]))
    slide_ids = sorted(Path(str(s)).stem for s in cohort["slide_id"])
    case_of = {Path(str(s)).stem: c for s, c in zip(cohort["slide_id"], cohort["case_id"])}
    b = np.array([site_of[case_of[s]] == "B" for s in slide_ids])
    root = out / "features" / encoder
    base = slide_means(root / "none", slide_ids)
    mu, scale = base.mean(0), float(np.sqrt(base.var(0).mean()))
    sets = {n: slide_means(root / n, slide_ids) for n in names if (root / n).is_dir()}

    def none_scale(x, bb):
        z = (x - mu) / scale
        return float(np.linalg.norm(z[bb].mean(0) - z[~bb].mean(0)))

    rng = np.random.default_rng(0)
    idx_a, idx_b = np.flatnonzero(~b), np.flatnonzero(b)
    boots = [np.concatenate([rng.choice(idx_a, len(idx_a)), rng.choice(idx_b, len(idx_b))])
             for _ in range(n_boot)]
    out_d = {}
    for name, x in sets.items():
        r = {"none_scale": none_scale(x, b), "own": own_spread_distance(x, b)}
        if name != "none" and "none" in sets:
            for key, f in (("none_scale", none_scale), ("own", own_spread_distance)):
                diffs = [f(x[i], b[i]) - f(sets["none"][i], b[i]) for i in boots]
                r[key + "_minus_none"] = r[key] - (none_scale(sets["none"], b) if key == "none_scale"
                                                   else own_spread_distance(sets["none"], b))
                r[key + "_minus_none_se"] = float(np.std(diffs, ddof=1))
        out_d[name] = r
    return out_d


def patches_per_slide(out: Path, encoder: str, names) -> dict[str, dict[str, float]]:
    """Mean patches per slide kept by each site's own tissue mask, per feature set."""
    import pandas as pd

    from histokd_core.features import open_features

    cohort = pd.read_csv(out / "data" / "cohort.csv")
    sites = pd.read_csv(out / "sites.csv")
    site_of = dict(zip(sites["case_id"], sites["site"]))
    slide_site = {Path(str(s)).stem: site_of[c] for s, c in zip(cohort["slide_id"], cohort["case_id"])}
    counts = {}
    for name in names:
        root = out / "features" / encoder / name
        if root.is_dir():
            n = {sid: len(open_features(root, sid).feats("20x")) for sid in slide_site}
            counts[name] = {site: float(np.mean([k for sid, k in n.items() if slide_site[sid] == site]))
                            for site in ("A", "B")}
    return counts


def report(out: Path, seeds: int, encoder: str, n_folds: int = 5) -> None:
    """Merge ``results_*.json`` of the runs and print the table (paired differences to none)."""
    results, rows, extract_s, args = {}, [], {}, {}
    for path in sorted(out.glob(f"results_{encoder}_*.json")):
        part = json.loads(path.read_text())
        results.update(part["results"])
        rows += part["rows"]
        extract_s.update(part["extract_s"])
        args = part["args"]
    for key in ("gap", "c_b"):
        by = {(r["features"], r["seed"], r["fold"]): r[key] for r in rows}
        for name in results:
            diffs = [by[(name, s, f)] - by[("none", s, f)] for s in range(seeds) for f in range(n_folds)
                     if (name, s, f) in by and ("none", s, f) in by]
            if len(diffs) > 1:
                results[name][f"{key}_minus_none"], results[name][f"{key}_minus_none_se"] = mean_se(diffs)
    for name, d in fixed_scale_distances(out, encoder, list(results)).items():
        results[name]["distance_none_scale"] = d["none_scale"]
        results[name]["distances"] = d
    (out / f"results_{encoder}.json").write_text(json.dumps({"results": results, "rows": rows,
                                                  "extract_s": extract_s}, indent=1))
    print(f"\n{encoder} features; {args.get('cases')} cases, site B re-stained with StainShift.tilted({args.get('shift')}); "
          f"{seeds} seeds x {n_folds} folds; mean +- SE")
    print("| features | site AUC (0.5 = same) | site-mean distance (own spread) | site-mean distance "
          "(none's scale) | student C, site A test | student C, site B | gap A - B | "
          "gap - gap(none), paired |")
    print("|---|---|---|---|---|---|---|---|")
    for name in FEATURE_SETS:
        if name not in results:
            continue
        r = results[name]
        paired = (f"{r['gap_minus_none']:+.3f} +- {r['gap_minus_none_se']:.3f}"
                  if "gap_minus_none" in r else "-")
        print(f"| {name} | {r['site_auc']:.3f} +- {r['site_auc_se']:.3f} | {r['mean_distance']:.2f} | "
              f"{r.get('distance_none_scale', float('nan')):.2f} | "
              f"{r['c_a']:.3f} +- {r['c_a_se']:.3f} | {r['c_b']:.3f} +- {r['c_b_se']:.3f} | "
              f"{r['gap']:+.3f} +- {r['gap_se']:.3f} | {paired} |")
    print("\n| features | site-mean distance (own spread) - none | (none's scale) - none | "
          "student C on site B - none, paired |")
    print("|---|---|---|---|")
    for name in FEATURE_SETS:
        d = results.get(name, {}).get("distances", {})
        if "own_minus_none" in d:
            r = results[name]
            print(f"| {name} | {d['own_minus_none']:+.2f} +- {d['own_minus_none_se']:.2f} | "
                  f"{d['none_scale_minus_none']:+.2f} +- {d['none_scale_minus_none_se']:.2f} | "
                  f"{r['c_b_minus_none']:+.3f} +- {r['c_b_minus_none_se']:.3f} |")
    print("\npatches per slide (mean), site A / site B: " + "; ".join(
        f"{name} {c['A']:.1f} / {c['B']:.1f}" for name, c in patches_per_slide(out, encoder, FEATURE_SETS).items()))
    print(f"extraction seconds: {extract_s}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("/tmp/stain-bench"))
    p.add_argument("--cases", type=int, default=96)
    p.add_argument("--shift", type=float, default=1.0, help="StainShift.tilted strength of site B")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--folds", type=int, default=5, help="folds of site A (train/val/test)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--encoder", default="efficientnet-lite0", help="patch encoder spec")
    p.add_argument("--seed", type=int, default=0, help="cohort and site assignment seed")
    p.add_argument("--sets", default=",".join(FEATURE_SETS),
                   help="feature sets this process extracts and evaluates (run two processes "
                        "with disjoint sets to use two cores), then --report merges them")
    p.add_argument("--report", action="store_true", help="only merge results_*.json and print")
    args = p.parse_args()
    if args.report:
        report(args.out, args.seeds, args.encoder, args.folds)
        return
    import torch

    from histokd_core.methods.registry import register_method

    torch.set_num_threads(args.threads)
    register_method(METHOD, "bench_stain")  # this module: AMKD's teacher and student stages
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    names = [n for n in args.sets.split(",") if n]
    t0 = time.perf_counter()
    data, sites, originals, shifted, site_of_slide = make_two_sites(args.out, args.cases, args.shift, args.seed)
    log.info("cohort + re-staining: %.0f s", time.perf_counter() - t0)
    extract_seconds = extract_sets(args.out, names, originals, shifted, site_of_slide, args.encoder)

    slide_ids = sorted(originals)
    site = np.array([site_of_slide[s] for s in slide_ids])
    results: dict[str, dict] = {}
    all_rows = []
    for name in names:
        feats = args.out / "features" / args.encoder / name
        results[name] = site_separability(slide_means(feats, slide_ids), site)
        rows = student_gaps(args.out, data, feats, sites, range(args.seeds), args.epochs, name,
                            args.encoder, args.folds)
        all_rows += rows
        for key in ("c_a", "c_b", "gap"):
            results[name][key], results[name][key + "_se"] = mean_se([r[key] for r in rows])
        log.info("%s: %s", name, results[name])
    (args.out / f"results_{args.encoder}_{'_'.join(names)}.json").write_text(json.dumps(
        {"results": results, "rows": all_rows, "extract_s": extract_seconds,
         "args": {k: str(v) for k, v in vars(args).items()}}, indent=1))
    log.info("done in %.0f s; merge with --report", time.perf_counter() - t0)


if __name__ == "__main__":
    main()
