"""Training and inference throughput of every model against ABMIL, and TransMIL's attention.

Issue 16, point 6. On the synthetic feature cohort (``make_feature_cohort``; ``--cases`` cases of
about ``--patches`` patches of width ``--feat-dim``, fold 0), for each model of the AMKD, subspace
and MoMKD methods and the ABMIL / TransMIL baselines (built through the method registry, default
configs, teachers trained for nothing: cost does not depend on the weights):

- seconds per training epoch over the fold's training bags (Adam, the model's own loss, the
  trainer's default of one bag per step) and seconds per slide at inference (``predict``), each
  with its ratio to ABMIL measured in the same run;
- the data-loading share: building the fold (features read from the store, omics normalised) and
  one pass over the bags without a model, against the epoch time.

A second table times one TransMIL training step on a 400-patch bag (441 tokens with the class
token and the square padding) with its Nystrom attention forced (256 landmarks, 6 pseudo-inverse
iterations: the previous behaviour) and with the exact attention it now uses where that is cheaper.

Usage: ``python bench/bench_throughput.py [--cases 40] [--patches 400] [--threads 1]``.
MoMKD's comparison with its authors' code is issue 12's (``bench/bench_momkd*``), not here.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from histokd_core.cohort import validate_cohort
from histokd_core.dataset import CohortData
from histokd_core.methods import registry
from histokd_core.synthetic.cohort import make_feature_cohort

MODELS = [  # ABMIL first: every ratio is to it
    ("amkd", "survival", "abmil"),
    ("amkd", "survival", "student"),
    ("subspace", "classification", "student"),
    ("momkd", "classification", "student"),
    ("momkd", "classification", "transmil"),  # the TransMIL-style baseline is a MoMKD stage
]


def build(method: str, task: str, stage_name: str, info):
    module = registry.get_method(method)
    trained: dict = {}
    for stage in module.stages(module.Config()):
        if stage.name in ("teacher",) or stage.name == stage_name:
            torch.manual_seed(0)
            trained[stage.name] = stage.build(info, trained)
        if stage.name == stage_name:
            return trained[stage.name]
    raise SystemExit(f"{method} has no stage {stage_name!r}: {[s.name for s in module.stages(module.Config())]}")


def epoch_seconds(model, bags) -> float:
    model.train()
    if hasattr(model, "prepare"):
        model.prepare(bags, seed=0)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    t0 = time.perf_counter()
    for bag in bags:
        opt.zero_grad()
        model.loss([bag])["loss"].backward()
        opt.step()
    return time.perf_counter() - t0


def predict_seconds(model, bags) -> float:
    model.eval()
    t0 = time.perf_counter()
    with torch.no_grad():
        for bag in bags:
            model.predict(bag)
    return (time.perf_counter() - t0) / len(bags)


def data(task: str, args):
    fc = make_feature_cohort(None, n_cases=args.cases, n_patches=args.patches, feat_dim=args.feat_dim, seed=0)
    label = "label" if task == "classification" else None
    cohort = validate_cohort(fc.cohort, task, label, where="synthetic cohort")
    t0 = time.perf_counter()
    cd = CohortData(cohort, fc.features, omics=fc.expression, gene_sets=fc.gene_sets, task=task, n_folds=5, seed=0)
    fold = cd.fold(0)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for bag in fold.train:
        bag.feats.float().sum()
    return fold, build_s, time.perf_counter() - t0


def transmil_table(feat_dim: int) -> None:
    from histokd_core.bag import Bag
    from histokd_core.methods.baselines.transmil import TransMIL

    torch.manual_seed(0)
    model = TransMIL(feat_dim)
    bag = Bag("t", torch.randn(400, feat_dim), torch.zeros(400, 2, dtype=torch.long), label=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    layers = [model.layer1.attn, model.layer2.attn]

    def step() -> float:
        t0 = time.perf_counter()
        opt.zero_grad()
        model.loss([bag])["loss"].backward()
        opt.step()
        return time.perf_counter() - t0

    rows = {}
    for name in ("nystrom (forced)", "exact (default)"):
        for layer in layers:
            if name.startswith("nystrom"):
                layer.exact_is_cheaper = lambda n, m=layer.landmarks: n <= m
            else:
                layer.__dict__.pop("exact_is_cheaper", None)
        step()
        rows[name] = min(step() for _ in range(5))
    print("\nTransMIL, one training step on a 400-patch bag (441 tokens), best of 5")
    ref = rows["nystrom (forced)"]
    for name, sec in rows.items():
        print(f"   {name:<18} {sec:7.3f} s   x{ref / sec:5.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=40)
    ap.add_argument("--patches", type=int, default=400)
    ap.add_argument("--feat-dim", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    print(f"torch {torch.__version__}, {args.threads} thread(s); load average {load[0]:.1f} / {load[1]:.1f} / "
          f"{load[2]:.1f}; {args.cases} cases x ~{args.patches} patches x {args.feat_dim} dims, fold 0")
    results = {}
    folds = {}
    print(f"\n   {'method / model':<26} {'s/epoch':>8} {'x ABMIL':>8} {'s/slide':>8} {'x ABMIL':>8} "
          f"{'train bags':>10} {'data %':>7}")
    for method, task, stage in MODELS:
        if task not in folds:
            folds[task] = data(task, args)
        fold, build_s, pass_s = folds[task]
        model = build(method, task, stage, fold.info)
        ep = epoch_seconds(model, fold.train)
        inf = predict_seconds(model, fold.test)
        results[(method, stage)] = (ep, inf)
        ref = results.get(("amkd", "abmil"), (ep, inf))
        share = 100 * (build_s / 100 + pass_s) / ep  # the fold is built once per 100 epochs at most
        print(f"   {method + ' / ' + stage:<26} {ep:8.2f} {ref[0] / ep:8.2f} {inf:8.4f} {ref[1] / inf:8.2f} "
              f"{len(fold.train):>10} {share:7.2f}")
    print("   x ABMIL > 1: faster than ABMIL. data %: (fold build / 100 + one pass over the bags) / epoch")
    for task, (_, build_s, pass_s) in folds.items():
        print(f"   {task}: fold built in {build_s:.2f} s, one pass over the training bags {pass_s * 1000:.1f} ms")
    transmil_table(args.feat_dim)
    load = os.getloadavg()
    print(f"\nload average at end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}")


if __name__ == "__main__":
    main()
