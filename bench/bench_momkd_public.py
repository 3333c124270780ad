"""MoMKD side by side with the authors' public code (``CAIR-LAB-WFUSM/MoMKD``) on the same data.

Run::

    python bench/bench_momkd_public.py --public /path/to/MoMKD[.git] [--cohort separable,default]
        [--seeds 0,1,2] [--threads 1] [--jobs 2] [--work /tmp/momkd-public]
    python bench/bench_momkd_public.py swap /tmp/momkd-public [--folds 0] [--cases 40]

``--jobs`` runs that many (implementation, seed) runs at once, each a child process; each
cohort's tables print as soon as its runs are done. The ``swap`` form reads a finished run's
folder and prints the swap diagnostic (``train.swap.model_swap_diagnostic``) of our trained
students:
how much of the memory update and of the alignments follows the expression, how much the slide.

``--public`` is a checkout or a git directory of the authors' repository (for example the one
the ``fetch`` tool brings, ``github:CAIR-LAB-WFUSM/MoMKD``). It is copied into a scratch folder
under ``--work`` and three one-line edits are applied there (nothing of it enters this
repository):

1. ``utils/utils.py`` line 11: drop the unused ``from torchvision import transforms`` (torchvision
   cannot be imported next to the CPU torch wheel);
2. ``utils/core_utils.py`` line 197 and 3. ``test.py`` line 205: ``wsi_input_dim=1536`` becomes
   the cohort's feature dimension (the public code has no flag for it).

Its dependencies beyond this project's (``einops``, ``einx``) must be installed in the running
environment; they are not dependencies of napari-histokd.

For each cohort (``separable``: morphology strong enough that a logistic regression on mean-pooled
patch features is clearly above chance; ``default``: the synthetic cohort's default knobs) the
script writes the cohort in the formats the public code reads: one CLAM ``.h5`` per slide
(``features (P, d)``, ``coords (P, 2)``), one omics ``.npy`` per case, a label CSV and CLAM split
files (``splits_<k>.csv``, columns ``train``, ``val``, ``test`` of slide ids; stratified
64/16/20 folds from ``histokd_core.cohort.make_folds`` with the seed). This project's MoMKD reads
the very same files (the ``.h5`` folder, an omics table holding the same values, the same split
files). For every seed both implementations train on the same 5 folds with that seed:

- theirs: ``main.py`` then ``test.py`` with the settings of their ``run.sh`` (``--lr 2e-4
  --num_memory 16 --gc 16 --max_epochs 100 --early_stopping --patience 1 --stop_epoch 1``);
  their loaders use the worker processes they hard-code (8 for training, 4 for validation and
  test);
- ours: ``run_cv("momkd")`` with the EMA memory (the paper, our default) and the gradient-trained
  memory (their rule) as stages, AdamW-free Adam at their learning rate and weight decay
  (2e-4, 1e-4), gradient clipping at 16, ``--epochs``/``--patience``, no loader workers (each
  slide is read once and kept in memory).

Both run as child processes with the same ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` (``--threads``),
so both use the same number of torch threads. Measured per run: test AUC, accuracy and macro-F1
(arg-max class, both computed here from the saved per-slide probabilities with the same
scikit-learn calls), seconds per training epoch (train pass + validation pass, their loops timed
from outside; ours from epoch start to epoch end, which also includes writing our resumable
training state), milliseconds per slide at inference (model only, and end to end from the ``.h5``
file: reading, kNN graph, forward) and the peak RSS of the whole process tree (the process and
its loader workers, sampled every 0.1 s; RSS of forked workers shares pages with the parent, so
the sum overstates the physical memory a little). The timing wrappers and the ``__main__`` block
runner live in this file (``_public-train``, ``_public-test``); they call the authors' functions
unchanged.

Our runs also train ABMIL on the same folds (``--ours-config '{"baselines": ["abmil"]}'``): the
speed table then sets our student's seconds per epoch and per slide beside ABMIL's (issue 16,
point 6). ``"fixed_memory_ablation": false`` leaves out the fixed-memory stage.

Reference rows (same folds): logistic regression on mean-pooled patch features, and an oracle
logistic regression on the true planted shares of every slide. The table prints each model's
mean +- sd over seeds x folds and the paired difference to the authors' code with its standard
error. Results, logs and both implementations' run folders stay under ``--work``; a summary JSON is
written there (``summary.json``).
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import math
import os
import runpy
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

PUBLIC_REPO = "CAIR-LAB-WFUSM/MoMKD"
#: (file, 1-based line, text expected on that line, replacement; ``{feat_dim}`` is filled in)
PUBLIC_EDITS = (
    ("utils/utils.py", 11, "from torchvision import transforms", ""),
    ("utils/core_utils.py", 197, "wsi_input_dim=1536", "wsi_input_dim={feat_dim}"),
    ("test.py", 205, "wsi_input_dim=1536", "wsi_input_dim={feat_dim}"),
)
#: the public ``run.sh`` settings (their task "her2" is their binary classification path)
PUBLIC_TRAIN_ARGS = (
    "--model_name", "mkd", "--task_type", "her2", "--mode", "coattn", "--lr", "2e-4",
    "--num_memory", "16", "--gc", "16", "--max_epochs", "100", "--early_stopping",
    "--patience", "1", "--stop_epoch", "1", "--k", "5",
)
COHORTS = {
    # morphology strong enough for a mean-pool linear model (5-fold test AUC 0.86 at 120 cases,
    # seeds 0-2; the default knobs give 0.67: docs/benchmarks.md, issue 12)
    "separable": {"histology_signal": 4.0, "histology_noise": 0.3, "planted_fraction": 0.4},
    # the synthetic cohort's default knobs (``SignalKnobs()``)
    "default": {},
}
SPLIT_NAME = "synthetic"


# ------------------------------------------------------------------------------------------------
# the authors' code in a scratch folder


def prepare_public(source: Path, dest: Path, feat_dim: int) -> str:
    """Copy the authors' repository (git dir or checkout) to ``dest`` and apply ``PUBLIC_EDITS``.

    Returns the commit (or ``"working tree"`` for a folder that is not a git checkout). Raises
    ``SystemExit`` with the file and line when an expected line is not there (another version).
    """
    source = Path(source).expanduser().resolve()
    if not source.exists():
        raise SystemExit(f"--public {source}: does not exist")
    dest.mkdir(parents=True)
    git_dir = None
    if (source / "HEAD").is_file() and (source / "objects").is_dir():
        git_dir = source
    elif (source / ".git").exists():
        git_dir = None  # a checkout: copy its working tree as the user has it
    if git_dir is not None:
        commit = subprocess.run(
            ["git", "--git-dir", str(git_dir), "rev-parse", "HEAD"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
        with tempfile.TemporaryFile() as archive:
            subprocess.run(["git", "--git-dir", str(git_dir), "archive", "--format=tar", "HEAD"],
                           check=True, stdout=archive)
            archive.seek(0)
            with tarfile.open(fileobj=archive) as tar:
                tar.extractall(dest, filter="data")
    else:
        shutil.rmtree(dest)
        shutil.copytree(source, dest, ignore=shutil.ignore_patterns(".git"))
        head = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"],
                              capture_output=True, text=True)
        commit = head.stdout.strip() if head.returncode == 0 else "working tree"
    for rel, line_no, old, new in PUBLIC_EDITS:
        path = dest / rel
        if not path.is_file():
            raise SystemExit(f"{PUBLIC_REPO} {rel}: missing; is --public the authors' repository?")
        lines = path.read_text().split("\n")
        if line_no > len(lines) or old not in lines[line_no - 1]:
            raise SystemExit(
                f"{PUBLIC_REPO} {rel} line {line_no}: expected {old!r}; this script knows commit "
                "226ad63, the repository has changed"
            )
        lines[line_no - 1] = lines[line_no - 1].replace(old, new.format(feat_dim=feat_dim))
        path.write_text("\n".join(lines))
    return commit


# ------------------------------------------------------------------------------------------------
# the cohort, written once in the public code's formats


@dataclass
class CohortFiles:
    """Where a written cohort lives (paths as strings, so it serialises to JSON)."""

    name: str
    root: str
    h5_dir: str
    npy_dir: str
    omics_csv: str
    labels_csv: str
    split_root: str  # the public code's ./splits
    n_cases: int
    n_genes: int
    feat_dim: int
    knobs: dict

    def split_dir(self, seed: int) -> Path:
        """Folder of ``splits_<k>.csv`` for ``seed``."""
        return Path(self.split_root) / "5foldcv" / f"{SPLIT_NAME}_s{seed}"


def write_cohort(
    root: Path, name: str, seeds: list[int], n_cases: int, n_patches: int, feat_dim: int
) -> tuple[CohortFiles, dict]:
    """Write cohort ``name`` under ``root``; returns the files and the in-memory truth
    (``labels``, mean-pooled features ``meanpool (n, d)``, planted shares ``shares (n, K)``,
    slide and case ids in cohort order)."""
    import h5py
    import pandas as pd

    from histokd_core.cohort import validate_cohort, make_folds
    from histokd_core.synthetic.cohort import make_feature_cohort

    knobs = dict(COHORTS[name])
    fc = make_feature_cohort(None, n_cases=n_cases, n_patches=n_patches, feat_dim=feat_dim,
                             seed=0, with_10x=False, multi_slide_fraction=0.0, **knobs)
    table = fc.cohort.reset_index(drop=True)
    # the public code matches an omics file to a case by the first 12 characters of its name
    # (the length of a TCGA barcode): case ids are 12 characters long for it to find any
    case_of = {c: f"SYNTH-{i:06d}" for i, c in enumerate(table["case_id"])}
    slide_of = {s: f"{case_of[c]}-DX1" for c, s in zip(table["case_id"], table["slide_id"])}
    root.mkdir(parents=True)
    h5_dir, npy_dir = root / "h5", root / "omics_npy"
    h5_dir.mkdir()
    npy_dir.mkdir()
    meanpool, shares = [], []
    for old_slide in table["slide_id"]:
        sf = fc.features[old_slide]
        feats, coords = sf.feats("20x"), sf.coords("20x")
        with h5py.File(h5_dir / f"{slide_of[old_slide]}.h5", "w") as h5:
            h5.create_dataset("features", data=feats.astype(np.float32))
            ds = h5.create_dataset("coords", data=coords.astype(np.int64))
            ds.attrs["patch_size"] = 256
            ds.attrs["patch_level"] = 0
        meanpool.append(feats.mean(0))
        planted = fc.planted[old_slide]
        shares.append([(planted == k).mean() for k in range(fc.knobs.n_factors)])
    expr = fc.expression.loc[list(table["case_id"])]
    values = expr.to_numpy(np.float64)
    # z-scored over the cohort, as the public gene-selection pipeline writes its .npy vectors
    values = ((values - values.mean(0)) / values.std(0)).astype(np.float32)
    ids = [case_of[c] for c in table["case_id"]]
    for cid, row in zip(ids, values):
        np.save(npy_dir / f"{cid}.npy", row)
    omics = pd.DataFrame(values, index=pd.Index(ids, name="case_id"), columns=expr.columns)
    omics.to_csv(root / "omics.csv", float_format="%.9g")
    labels = pd.DataFrame({"case_id": ids, "slide_id": [slide_of[s] for s in table["slide_id"]],
                           "label": table["label"].astype(int)})
    labels.to_csv(root / "labels.csv", index=False)
    cohort = validate_cohort(labels, "classification", "label", where=str(root / "labels.csv"))
    files = CohortFiles(name, str(root), str(h5_dir), str(npy_dir), str(root / "omics.csv"),
                        str(root / "labels.csv"), str(root / "splits"), len(ids), values.shape[1],
                        feat_dim, {**asdict(fc.knobs)})
    slide_by_case = dict(zip(labels["case_id"], labels["slide_id"]))
    for seed in seeds:
        folds = make_folds(cohort, n_folds=5, seed=seed)
        out = files.split_dir(seed)
        out.mkdir(parents=True)
        for k in range(5):
            cols = {s: pd.Series([slide_by_case[c] for c in folds.cases(k, s)], dtype=object)
                    for s in ("train", "val", "test")}
            pd.DataFrame(cols).to_csv(out / f"splits_{k}.csv", index=False)
    truth = {"labels": labels["label"].to_numpy(), "meanpool": np.stack(meanpool),
             "shares": np.asarray(shares), "slide_ids": list(labels["slide_id"])}
    return files, truth


def read_split(files: CohortFiles, seed: int, fold: int) -> dict[str, list[str]]:
    """Slide ids of each split of ``fold``."""
    import pandas as pd

    table = pd.read_csv(files.split_dir(seed) / f"splits_{fold}.csv", dtype=str)
    return {s: list(table[s].dropna()) for s in ("train", "val", "test")}


def reference_rows(files: CohortFiles, truth: dict, seeds: list[int]) -> dict[str, dict]:
    """Per (seed, fold) test metrics of logistic regressions on mean-pooled features and on the
    true planted shares (oracle), trained on the train split of the same folds."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from histokd_core.train.metrics import classification_metrics

    index = {s: i for i, s in enumerate(truth["slide_ids"])}
    y = truth["labels"]
    out: dict[str, dict] = {"meanpool_logreg": {}, "oracle_planted_shares": {}}
    for seed in seeds:
        for fold in range(5):
            split = read_split(files, seed, fold)
            tr = [index[s] for s in split["train"]]
            te = [index[s] for s in split["test"]]
            for name, x in (("meanpool_logreg", truth["meanpool"]),
                            ("oracle_planted_shares", truth["shares"])):
                model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=5000))
                model.fit(x[tr], y[tr])
                probs = model.predict_proba(x[te])
                out[name][f"{seed}/{fold}"] = classification_metrics(y[te], probs)
    return out


# ------------------------------------------------------------------------------------------------
# child processes with the peak RSS of their process tree


def run_monitored(cmd: list[str], cwd: Path, env: dict, log_path: Path) -> dict:
    """Run ``cmd``; return exit code, wall seconds, peak RSS (MiB) summed over the process and all
    its descendants, the peak of the main process alone and the most processes seen at once."""
    import psutil

    peak = peak_main = 0
    most = 1
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = psutil.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            total = 0
            try:
                members = [proc, *proc.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            for p in members:
                try:
                    rss = p.memory_info().rss
                except psutil.Error:
                    continue
                total += rss
                if p.pid == proc.pid:
                    peak_main = max(peak_main, rss)
            peak = max(peak, total)
            most = max(most, len(members))
            time.sleep(0.1)
    result = {"returncode": proc.returncode, "wall_s": time.perf_counter() - start,
              "peak_rss_mib": peak / 2**20, "peak_rss_main_mib": peak_main / 2**20,
              "max_processes": most, "log": str(log_path)}
    _dump(proc_path(log_path), result)  # so `report` can rebuild the tables of a cut run
    return result


def proc_path(log_path: Path) -> Path:
    """Where :func:`run_monitored` keeps its result for the run logged at ``log_path``."""
    return log_path.with_name(log_path.name + ".proc.json")


def child_env(threads: int) -> dict:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    env["PYTHONWARNINGS"] = "ignore"
    return env


# ------------------------------------------------------------------------------------------------
# the authors' code: main.py + test.py, timed from outside


def run_public(src: Path, files: CohortFiles, seed: int, threads: int, run_dir: Path,
               n_folds: int = 5, max_epochs: int | None = None) -> dict:
    """Train and test the public code on folds ``0 .. n_folds - 1`` of ``seed`` (``run.sh``
    settings; ``max_epochs`` overrides its 100 for timing runs); returns per-fold metrics, epoch
    and inference timings and the peak RSS of each phase (:func:`collect_public`)."""
    run_dir.mkdir(parents=True)
    (run_dir / "log").mkdir()  # main.py's Logger needs ./log to exist
    (run_dir / "splits").symlink_to(files.split_root)  # ./splits/5foldcv/<split_dir>/
    results = run_dir / "results"
    split_name = files.split_dir(seed).name
    common = ["--data_root_dir", files.h5_dir, "--csv_path", files.labels_csv,
              "--label_col", "label", "--positive_label", "1", "--seed", str(seed)]
    train_args = [*PUBLIC_TRAIN_ARGS, *common, "--omic_root_dir", files.npy_dir,
                  "--split_dir", split_name, "--results_dir", str(results),
                  "--k_start", "0", "--k_end", str(n_folds)]
    if max_epochs is not None:
        train_args += ["--max_epochs", str(max_epochs)]
    test_args = ["--model_name", "mkd", "--omic_input_dim", str(files.n_genes), "--k",
                 str(n_folds),
                 "--num_memory", "16", "--results_dir", str(results),
                 "--split_dir_name", split_name, *common]
    env = child_env(threads)
    me = str(Path(__file__).resolve())
    for phase, args in (("train", train_args), ("test", test_args)):
        timing = run_dir / f"timing_{phase}.json"
        cmd = [sys.executable, me, f"_public-{phase}", str(src), str(timing), "--", *args]
        proc = run_monitored(cmd, run_dir, env, run_dir / f"{phase}.log")
        if proc["returncode"] != 0:
            raise SystemExit(f"public code {phase} failed (exit {proc['returncode']}); see "
                             f"{proc['log']}")
    return collect_public(files, seed, run_dir, n_folds)


def collect_public(files: CohortFiles, seed: int, run_dir: Path, n_folds: int = 5) -> dict:
    """Metrics, timings and memory of a finished :func:`run_public` in ``run_dir``, from its files
    (test predictions, timing and process records)."""
    import pandas as pd

    from histokd_core.train.metrics import classification_metrics

    results = run_dir / "results"
    out = {phase: {**json.loads(proc_path(run_dir / f"{phase}.log").read_text()),
                   **json.loads((run_dir / f"timing_{phase}.json").read_text())}
           for phase in ("train", "test")}
    exp_dirs = sorted((results / "5foldcv").glob(f"*/*_s{seed}"))
    if len(exp_dirs) != 1:
        raise SystemExit(f"public code: expected one result folder for seed {seed}, "
                         f"found {exp_dirs}")
    folds, dropped = {}, {}
    summary = pd.read_csv(exp_dirs[0] / "summary_metrics.csv")
    for fold in range(n_folds):
        preds = pd.read_csv(exp_dirs[0] / f"test_preds_fold_{fold}.csv", dtype={"slide_id": str})
        expected = read_split(files, seed, fold)["test"]
        dropped[fold] = sorted(set(expected) - set(preds["slide_id"]))
        probs = preds[["p_0", "p_1"]].to_numpy()
        metrics = classification_metrics(preds["label"].to_numpy(), probs)
        row = summary.loc[summary["fold"] == fold].iloc[0]
        metrics.update({"acc_tuned_threshold": float(row["accuracy_best"]),
                        "f1_tuned_threshold": float(row["f1_macro_best"]),
                        "tuned_threshold": float(row["best_threshold_from_val"])})
        folds[f"{seed}/{fold}"] = metrics
    log_text = (run_dir / "train.log").read_text(errors="replace")
    reported = [line for line in log_text.splitlines() if "Mean Validation AUC" in line]
    train, test = out["train"], out["test"]
    epochs = [t + v for t, v in zip(train["train_loop_s"], train["val_loop_s"])]
    epochs_cpu = [t + v for t, v in zip(train["train_loop_cpu_s"], train["val_loop_cpu_s"])]
    test_calls = [c for c in test["inference_calls"] if c["split"] == "test"]
    n_test = max(1, sum(c["n_slides"] for c in test_calls))
    return {
        "folds": folds,
        "dropped_test_slides": dropped,
        "printed_by_main_py": reported[-1].strip() if reported else "",
        "best_val_auc": train["best_val_auc"],
        "epochs_per_fold": train["epochs_per_fold"],
        "s_per_epoch": float(np.mean(epochs)),
        "cpu_s_per_epoch": float(np.mean(epochs_cpu)),
        "ms_per_slide_model": 1e3 * float(np.mean(test["forward_s"])),
        "ms_per_slide_end_to_end": 1e3 * sum(c["seconds"] for c in test_calls) / n_test,
        "cpu_ms_per_slide_end_to_end": 1e3 * sum(c["cpu_seconds"] for c in test_calls) / n_test,
        "peak_rss_mib": max(train["peak_rss_mib"], test["peak_rss_mib"]),
        "peak_rss_main_mib": max(train["peak_rss_main_mib"], test["peak_rss_main_mib"]),
        "max_processes": max(train["max_processes"], test["max_processes"]),
        "wall_s": train["wall_s"] + test["wall_s"],
    }


def _our_commit() -> str:
    """This repository's commit (``+dirty`` with uncommitted changes), or ``"unknown"``."""
    here = Path(__file__).resolve().parent
    head = subprocess.run(["git", "-C", str(here), "describe", "--always", "--dirty=+dirty"],
                          capture_output=True, text=True, check=False)
    return head.stdout.strip() if head.returncode == 0 else "unknown"


def cpu_seconds(children: bool = True) -> float:
    """User + system CPU seconds of this process (all threads) and, with ``children``, of its
    finished child processes (loader workers are joined at the end of each pass)."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    total = own.ru_utime + own.ru_stime
    if children:
        done = resource.getrusage(resource.RUSAGE_CHILDREN)
        total += done.ru_utime + done.ru_stime
    return total


def _dump(path: Path, record: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1, default=float))
    tmp.replace(path)


def _public_train(src: Path, timing_path: Path, argv: list[str]) -> None:
    """Run the authors' ``main.py`` unchanged with its training and validation loops timed."""
    sys.path.insert(0, str(src))
    sys.argv = [str(src / "main.py"), *argv]
    import utils.Mkd_train_utils as loops  # noqa: E402  (their package, from src)

    record = {"train_loop_s": [], "val_loop_s": [], "train_loop_cpu_s": [], "val_loop_cpu_s": [],
              "n_train": [], "best_val_auc": [], "epochs_per_fold": [], "bootstrap_s": []}
    train_loop, val_loop = loops.mkd_train_loop, loops.mkd_validate_loop

    def timed_train(epoch, model, loader, *args, **kwargs):
        start, cpu = time.perf_counter(), cpu_seconds()
        result = train_loop(epoch, model, loader, *args, **kwargs)
        record["train_loop_s"].append(time.perf_counter() - start)
        record["train_loop_cpu_s"].append(cpu_seconds() - cpu)
        record["n_train"].append(len(loader.dataset))
        _dump(timing_path, record)
        return result

    def timed_val(*args, **kwargs):
        start, cpu = time.perf_counter(), cpu_seconds()
        result = val_loop(*args, **kwargs)
        record["val_loop_s"].append(time.perf_counter() - start)
        record["val_loop_cpu_s"].append(cpu_seconds() - cpu)
        _dump(timing_path, record)
        return result

    loops.mkd_train_loop, loops.mkd_validate_loop = timed_train, timed_val
    import utils.core_utils as core  # noqa: E402  (imports the timed loops)

    bootstrap, train_mkd = core.bootstrap_codebooks, core.train_mkd

    def timed_bootstrap(*args, **kwargs):
        start = time.perf_counter()
        bootstrap(*args, **kwargs)
        record["bootstrap_s"].append(time.perf_counter() - start)

    def counted_train(*args, **kwargs):
        before = len(record["train_loop_s"])
        best = train_mkd(*args, **kwargs)
        record["best_val_auc"].append(float(best))
        record["epochs_per_fold"].append(len(record["train_loop_s"]) - before)
        _dump(timing_path, record)
        return best

    core.bootstrap_codebooks, core.train_mkd = timed_bootstrap, counted_train
    _dump(timing_path, record)
    runpy.run_path(str(src / "main.py"), run_name="__main__")


def _public_test(src: Path, timing_path: Path, argv: list[str]) -> None:
    """Run the authors' ``test.py`` unchanged (its ``__main__`` block, executed in the module's
    namespace) with ``run_inference`` and ``MKD.forward_inference`` timed."""
    sys.path.insert(0, str(src))
    sys.argv = [str(src / "test.py"), *argv]
    spec = importlib.util.spec_from_file_location("momkd_public_test", src / "test.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    record = {"inference_calls": [], "forward_s": []}
    run_inference, forward = module.run_inference, module.MKD.forward_inference
    calls = 0

    def timed_inference(model, df_all, slide_ids, *args, **kwargs):
        nonlocal calls
        start, cpu = time.perf_counter(), cpu_seconds()
        df = run_inference(model, df_all, slide_ids, *args, **kwargs)
        record["inference_calls"].append({
            "split": "val" if calls % 2 == 0 else "test", "seconds": time.perf_counter() - start,
            "cpu_seconds": cpu_seconds() - cpu, "n_slides": int(len(df)),
            "n_requested": int(len(slide_ids))})
        calls += 1
        _dump(timing_path, record)
        return df

    def timed_forward(self, *args, **kwargs):
        start = time.perf_counter()
        out = forward(self, *args, **kwargs)
        record["forward_s"].append(time.perf_counter() - start)
        return out

    module.run_inference, module.MKD.forward_inference = timed_inference, timed_forward
    source = (src / "test.py").read_text()
    for node in ast.parse(source).body:
        if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
            code = compile(ast.Module(body=node.body, type_ignores=[]), str(src / "test.py"),
                           "exec")
            exec(code, module.__dict__)  # noqa: S102  (their own __main__ block)
            break
    else:
        raise SystemExit("test.py: no __main__ block")
    _dump(timing_path, record)


# ------------------------------------------------------------------------------------------------
# this project's MoMKD, in a child process too


def run_ours(files: CohortFiles, seed: int, threads: int, run_dir: Path, epochs: int,
             patience: int, config: dict, n_folds: int = 5) -> dict:
    """Train and test this project's MoMKD (``run_cv``) on folds ``0 .. n_folds - 1`` of ``seed``
    in a child process; returns per-fold metrics of every stage, timings and peak RSS."""
    run_dir.mkdir(parents=True)
    spec = {"files": asdict(files), "seed": seed, "threads": threads, "epochs": epochs,
            "patience": patience, "config": config, "out": str(run_dir / "run"),
            "timing": str(run_dir / "timing.json"), "folds": list(range(n_folds))}
    (run_dir / "spec.json").write_text(json.dumps(spec, indent=1))
    cmd = [sys.executable, str(Path(__file__).resolve()), "_ours", str(run_dir / "spec.json")]
    proc = run_monitored(cmd, run_dir, child_env(threads), run_dir / "ours.log")
    if proc["returncode"] != 0:
        raise SystemExit(f"histokd MoMKD failed (exit {proc['returncode']}); see {proc['log']}")
    return collect_ours(seed, run_dir)


def collect_ours(seed: int, run_dir: Path) -> dict:
    """Metrics, timings and memory of a finished :func:`run_ours` in ``run_dir``, from its files."""
    proc = json.loads(proc_path(run_dir / "ours.log").read_text())
    timing = json.loads((run_dir / "timing.json").read_text())
    metrics = json.loads((run_dir / "run" / "metrics.json").read_text())
    models: dict[str, dict] = {}
    for entry in metrics["folds"]:
        for name, values in entry["test"].items():
            models.setdefault(name, {})[f"{seed}/{entry['fold']}"] = values
    epochs_s = timing["epoch_s"]
    return {
        "models": models,
        "s_per_epoch": {k: float(np.mean(v)) for k, v in epochs_s.items()},
        "cpu_s_per_epoch": {k: float(np.mean(v)) for k, v in timing["epoch_cpu_s"].items()},
        "epochs_per_fold": timing["epochs_per_fold"],
        "ms_per_slide_model": 1e3 * float(np.mean(timing["forward_s"])),
        "abmil_ms_per_slide_model": (1e3 * float(np.mean(timing["abmil_forward_s"]))
                                     if timing.get("abmil_forward_s") else math.nan),
        "ms_per_slide_end_to_end": 1e3 * float(np.mean(timing["end_to_end_s"])),
        "cpu_ms_per_slide_end_to_end": 1e3 * float(np.mean(timing["end_to_end_cpu_s"])),
        "peak_rss_mib": proc["peak_rss_mib"],
        "peak_rss_main_mib": proc["peak_rss_main_mib"],
        "max_processes": proc["max_processes"],
        "wall_s": proc["wall_s"],
    }


def _ours(spec_path: Path) -> None:
    """Train this project's MoMKD on the written cohort (same files, same folds) and time it."""
    import torch

    from histokd_core.cohort import load_cohort
    from histokd_core.dataset import CohortData, slide_bag
    from histokd_core.methods.momkd import Config
    from histokd_core.train import TrainConfig, run_cv
    from histokd_core.train.callbacks import Callback
    from histokd_core.train.checkpoint import load_model

    spec = json.loads(Path(spec_path).read_text())
    files = CohortFiles(**spec["files"])
    seed, timing_path = spec["seed"], Path(spec["timing"])
    torch.set_num_threads(spec["threads"])
    record: dict = {"epoch_s": {}, "epoch_cpu_s": {}, "epochs_per_fold": {}, "forward_s": [],
                    "end_to_end_s": [], "end_to_end_cpu_s": []}

    class EpochTimer(Callback):
        def on_stage_start(self, progress) -> None:
            self.start, self.cpu = time.perf_counter(), cpu_seconds(children=False)

        def on_epoch_end(self, progress, metrics) -> None:
            now, cpu = time.perf_counter(), cpu_seconds(children=False)
            record["epoch_s"].setdefault(progress.stage, []).append(now - self.start)
            record["epoch_cpu_s"].setdefault(progress.stage, []).append(cpu - self.cpu)
            self.start, self.cpu = now, cpu

        def on_stage_end(self, progress, result) -> None:
            record["epochs_per_fold"].setdefault(progress.stage, []).append(result.epochs_run)
            _dump(timing_path, record)

    cohort = load_cohort(files.labels_csv, task="classification", label_column="label")
    data = CohortData(cohort, files.h5_dir, omics=files.omics_csv, folds=files.split_dir(seed),
                      task="classification")
    config = Config(**{"baselines": (), **spec["config"]})
    train_config = TrainConfig(epochs=spec["epochs"], patience=spec["patience"], lr=2e-4,
                               weight_decay=1e-4, grad_clip=16.0, seed=seed, device="cpu",
                               num_threads=spec["threads"])
    result = run_cv("momkd", config, data, spec["out"], train_config, folds=spec["folds"],
                    callbacks=[EpochTimer()])
    # inference per test slide with the trained student, as `histokd predict` does it: read the
    # .h5, build the kNN graph, forward (end to end); and the forward alone with the graph built
    for fold in spec["folds"]:
        fold_dir = Path(result.run_dir) / f"fold_{fold}"
        if (fold_dir / "abmil.safetensors").exists():  # the reference of issue 16 point 6
            abmil, _ = load_model(fold_dir / "abmil.safetensors")
            for slide in read_split(files, seed, fold)["test"]:
                bag, _ = slide_bag(files.h5_dir, slide)
                start = time.perf_counter()
                with torch.no_grad():
                    abmil.predict(bag)
                record.setdefault("abmil_forward_s", []).append(time.perf_counter() - start)
        model, _ = load_model(fold_dir / "student.safetensors")
        for slide in read_split(files, seed, fold)["test"]:
            start, cpu = time.perf_counter(), cpu_seconds(children=False)
            bag, _ = slide_bag(files.h5_dir, slide)
            with torch.no_grad():
                model.predict(bag)
            record["end_to_end_s"].append(time.perf_counter() - start)
            record["end_to_end_cpu_s"].append(cpu_seconds(children=False) - cpu)
            start = time.perf_counter()
            with torch.no_grad():
                model.predict(bag)
            record["forward_s"].append(time.perf_counter() - start)
    _dump(timing_path, record)


# ------------------------------------------------------------------------------------------------
# tables


def paired(a: dict[str, float], b: dict[str, float]) -> tuple[float, float, int, int]:
    """Mean and standard error of ``a - b`` over the keys both have, and how often a >= b."""
    keys = sorted(set(a) & set(b))
    d = np.array([a[k] - b[k] for k in keys])
    se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else math.nan
    return float(d.mean()), se, int((d >= 0).sum()), len(d)


def summarize(rows: dict[str, dict[str, dict]], reference: str) -> list[str]:
    """Markdown table: per model mean +- sd of AUC/acc/F1 over seed x fold, paired AUC difference
    to ``reference``, and the bar ``mean >= reference - SE``."""
    ref_auc = {k: v["auc"] for k, v in rows[reference].items()}
    lines = ["| model | AUC mean +- sd | acc | macro-F1 | AUC - theirs (paired SE) | "
             "folds >= theirs | bar: >= theirs - SE |", "|---|---|---|---|---|---|---|"]
    for name, per_fold in rows.items():
        auc = np.array([v["auc"] for v in per_fold.values()])
        acc = np.mean([v["acc"] for v in per_fold.values()])
        f1 = np.mean([v["f1"] for v in per_fold.values()])
        if name == reference:
            diff, bar, wins = "-", "-", "-"
        else:
            mean, se, n_ge, n = paired({k: v["auc"] for k, v in per_fold.items()}, ref_auc)
            diff, wins = f"{mean:+.3f} ({se:.3f})", f"{n_ge}/{n}"
            bar = "yes" if mean >= -se else "no"
        lines.append(f"| {name} | {auc.mean():.3f} +- {auc.std():.3f} | {acc:.3f} | {f1:.3f} | "
                     f"{diff} | {wins} | {bar} |")
    return lines


def per_fold_table(rows: dict[str, dict[str, dict]]) -> list[str]:
    keys = sorted(next(iter(rows.values())))
    lines = ["| seed/fold | " + " | ".join(rows) + " |", "|---" * (len(rows) + 1) + "|"]
    for key in keys:
        cells = []
        for per_fold in rows.values():
            v = per_fold.get(key)
            cells.append("-" if v is None else f"{v['auc']:.3f} / {v['acc']:.2f} / {v['f1']:.2f}")
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return lines


def speed_table(theirs: list[dict], ours: list[dict], threads: int) -> list[str]:
    """Markdown table of epoch and inference times (wall and CPU), memory and processes, means over
    runs; ours per stage for the epoch rows."""

    def mean(values):
        return float(np.mean(values))

    lines = [f"| measurement ({threads} torch thread(s) each) | authors' code | ours | "
             "ours / theirs |", "|---|---|---|---|"]
    for key, label in (("s_per_epoch", "s per training epoch (train + validation pass), wall"),
                       ("cpu_s_per_epoch", "CPU s per training epoch (all processes)")):
        t = mean([r[key] for r in theirs])
        for stage in ours[0][key]:
            o = mean([r[key][stage] for r in ours])
            lines.append(f"| {label}, ours = {stage} | {t:.2f} | {o:.2f} | {o / t:.2f} |")
    for key, label in (("ms_per_slide_model", "ms per slide, model forward (graph built), wall"),
                       ("ms_per_slide_end_to_end", "ms per slide, .h5 -> graph -> prediction, wall"),
                       ("cpu_ms_per_slide_end_to_end",
                        "CPU ms per slide, .h5 -> graph -> prediction"),
                       ("peak_rss_mib", "peak RSS of the process tree, MiB"),
                       ("peak_rss_main_mib", "peak RSS of the main process, MiB")):
        t, o = mean([r[key] for r in theirs]), mean([r[key] for r in ours])
        lines.append(f"| {label} | {t:.1f} | {o:.1f} | {o / t:.2f} |")
    t_proc = max(r["max_processes"] for r in theirs)
    o_proc = max(r["max_processes"] for r in ours)
    lines.append(f"| processes at once (main + loader workers) | {t_proc} | {o_proc} | |")
    t_ep = [e for r in theirs for e in r["epochs_per_fold"]]
    o_ep = [e for r in ours for e in r["epochs_per_fold"]["student"]]
    lines.append(f"| epochs trained per fold (mean) | {np.mean(t_ep):.1f} | {np.mean(o_ep):.1f} "
                 "| |")
    if "abmil" in ours[0]["s_per_epoch"]:  # issue 16 point 6: against ABMIL in the same runs
        lines.append("\nOurs against ABMIL trained in the same runs (issue 16, point 6):\n")
        lines += ["| measurement | ours: student | ours: abmil | student / abmil |",
                  "|---|---|---|---|"]
        for key, label in (("s_per_epoch", "s per training epoch, wall"),
                           ("cpu_s_per_epoch", "CPU s per training epoch")):
            o = mean([r[key]["student"] for r in ours])
            a = mean([r[key]["abmil"] for r in ours])
            lines.append(f"| {label} | {o:.2f} | {a:.2f} | {o / a:.2f} |")
        o = mean([r["ms_per_slide_model"] for r in ours])
        a = mean([r["abmil_ms_per_slide_model"] for r in ours])
        lines.append(f"| ms per slide, model forward, wall | {o:.1f} | {a:.1f} | {o / a:.2f} |")
    return lines


def duel(public: Path, work: Path, args, name: str, n_cases: int, n_patches: int,
         feat_dim: int) -> dict:
    """Speed only, alternating the two implementations ``args.duel_repeats`` times on fold 0 of a
    cohort (``args.duel_epochs`` epochs each), so both meet the same machine load; returns the
    runs and prints per-repeat ratios with their median."""
    src = work / f"public_code_d{feat_dim}"
    if not src.exists():
        prepare_public(public, src, feat_dim)
    files, _ = write_cohort(work / name / "data", "separable", [0], n_cases, n_patches, feat_dim)
    theirs, ours = [], []
    config = {"compare_memory_updates": False, "fixed_memory_ablation": False,
              "baselines": ["abmil"]}
    for r in range(args.duel_repeats):
        theirs.append(run_public(src, files, 0, args.threads, work / name / f"public_r{r}",
                                 n_folds=1, max_epochs=args.duel_epochs))
        ours.append(run_ours(files, 0, args.threads, work / name / f"ours_r{r}",
                             args.duel_epochs, args.duel_epochs, config, n_folds=1))
    print(f"\n## speed, alternating runs: '{name}' ({n_cases} cases, ~{n_patches} patches, "
          f"d = {feat_dim}), fold 0, at most {args.duel_epochs} epochs, {args.duel_repeats} "
          "repeats\n")
    print("\n".join(speed_table(theirs, ours, args.threads)))
    for key in ("s_per_epoch", "cpu_s_per_epoch"):
        ratios = [o[key]["student"] / t[key] for t, o in zip(theirs, ours)]
        print(f"\n{key}, ours (student) / theirs per repeat: "
              f"{', '.join(f'{x:.2f}' for x in ratios)}; median {np.median(ratios):.2f}")
    for key in ("ms_per_slide_end_to_end", "cpu_ms_per_slide_end_to_end"):
        ratios = [o[key] / t[key] for t, o in zip(theirs, ours)]
        print(f"{key}, ours / theirs per repeat: {', '.join(f'{x:.2f}' for x in ratios)}; "
              f"median {np.median(ratios):.2f}")
    return {"theirs": theirs, "ours": ours, "files": asdict(files)}


def cohort_report(name: str, files: CohortFiles, truth: dict, seeds: list[int],
                  theirs: list[dict], ours: list[dict], patches: int, threads: int) -> dict:
    """Print the quality, per-fold and speed tables of one cohort; returns the per-model rows."""
    rows: dict[str, dict] = {"authors' code": {}}
    for r in theirs:
        rows["authors' code"].update(r["folds"])
    for r in ours:
        for model, per_fold in r["models"].items():
            rows.setdefault(f"ours: {model}", {}).update(per_fold)
    rows.update(reference_rows(files, truth, seeds))
    dropped = sum(len(v) for r in theirs for v in r["dropped_test_slides"].values())
    print(f"\n## cohort '{name}' ({files.n_cases} cases, 1 slide each, ~{patches} "
          f"patches, d = {files.feat_dim}, {files.n_genes} genes, knobs {COHORTS[name]}), "
          f"seeds {seeds} x 5 folds; test slides the authors' code dropped: {dropped}\n")
    print("\n".join(summarize(rows, "authors' code")))
    print("\nPer fold (AUC / acc / macro-F1):\n")
    print("\n".join(per_fold_table(rows)))
    print("\nSpeed and memory (mean over seeds):\n")
    print("\n".join(speed_table(theirs, ours, threads)))
    tuned = [v["acc_tuned_threshold"] - v["acc"] for r in theirs for v in r["folds"].values()]
    thresholds = [v["tuned_threshold"] for r in theirs for v in r["folds"].values()]
    print(f"\nAuthors' test.py, threshold tuned for F1 on the validation split: thresholds "
          f"{min(thresholds):.3f}-{max(thresholds):.3f}, test accuracy minus arg-max "
          f"accuracy {np.mean(tuned):+.3f} +- {np.std(tuned):.3f} (sd over folds).")
    for r, seed in zip(theirs, seeds):
        print(f"Seed {seed}: main.py prints '{r['printed_by_main_py']}'; test AUC of the same "
              f"folds {np.mean([v['auc'] for v in r['folds'].values()]):.4f}.")
    return rows


def report(work: Path) -> None:
    """Print the tables of every cohort of the run in ``work`` from the seeds for which both
    implementations finished (a run cut short keeps its finished seeds); the cohort's planted
    truth for the reference rows is generated again (deterministic) and checked against the
    written labels and features."""
    import h5py
    import pandas as pd

    run = json.loads((work / "run.json").read_text())
    args = run["args"]
    print(f"# report of {work} (started {run['started']}, this project at {run['commit']}, "
          f"{PUBLIC_REPO} @ {run['public_commit'][:7]}); load average now "
          f"{os.getloadavg()[0]:.1f}")
    for name in args["cohort"].split(","):
        files = CohortFiles(**run["cohorts"][name])
        seeds = [s for s in (int(x) for x in args["seeds"].split(","))
                 if (work / name / f"public_s{s}" / "test.log.proc.json").exists()
                 and (work / name / f"ours_s{s}" / "ours.log.proc.json").exists()]
        if not seeds:
            print(f"\n## cohort '{name}': no seed finished by both implementations")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            _, truth = write_cohort(Path(tmp) / "again", name, [], int(args["cases"]),
                                    int(args["patches"]), int(args["feat_dim"]))
        labels = pd.read_csv(files.labels_csv)
        with h5py.File(Path(files.h5_dir) / f"{labels['slide_id'].iloc[-1]}.h5", "r") as h5:
            last = h5["features"][:].mean(0)
        if not (np.array_equal(labels["label"].to_numpy(), truth["labels"])
                and np.allclose(last, truth["meanpool"][-1], atol=1e-5)):
            raise SystemExit(f"{files.root}: the written cohort differs from the regenerated one "
                             "(another version of the synthetic cohort?)")
        theirs = [collect_public(files, s, work / name / f"public_s{s}") for s in seeds]
        ours = [collect_ours(s, work / name / f"ours_s{s}") for s in seeds]
        cohort_report(name, files, truth, seeds, theirs, ours, int(args["patches"]),
                      int(args["threads"]))


# ------------------------------------------------------------------------------------------------
# what the memory transfers: the swap diagnostic on our trained MoMKD students


SWAP_STAGES = ("student", "student_gradient_memory")


def swap_report(work: Path, max_cases: int, n_shifts: int, folds: list[int]) -> list[str]:
    """Swap diagnostic (``train.swap.model_swap_diagnostic``) of the MoMKD students trained by a
    (possibly cut) run in ``work``: for each cohort, memory rule, seed and fold in ``folds``, over
    the first ``max_cases`` training cases of the fold, the share of each distillation target's
    change that follows the expression when one modality is swapped between cases. Pairs over all
    cases (the label travels with the expression, so swapping it can move the other class's
    memory) and within each class (label held fixed). Returns markdown lines: mean +- sd over seeds x folds."""
    from histokd_core.cohort import load_cohort
    from histokd_core.dataset import CohortData
    from histokd_core.train.checkpoint import load_model
    from histokd_core.train.swap import model_swap_diagnostic

    run = json.loads((work / "run.json").read_text())
    shares: dict[tuple, list[tuple[float, float, float]]] = {}
    for name, written in run["cohorts"].items():
        files = CohortFiles(**written)
        cohort = load_cohort(files.labels_csv, task="classification", label_column="label")
        for run_dir in sorted((work / name).glob("ours_s*")):
            seed = int(run_dir.name.removeprefix("ours_s"))
            data = CohortData(cohort, files.h5_dir, omics=files.omics_csv,
                              folds=files.split_dir(seed), task="classification")
            for fold in folds:
                bags = data.fold(fold).train[:max_cases]
                for stage in SWAP_STAGES:
                    ckpt = run_dir / "run" / f"fold_{fold}" / f"{stage}.safetensors"
                    if not ckpt.exists():
                        continue
                    model, _ = load_model(ckpt)
                    for pairing, within in (("all pairs", False), ("within class", True)):
                        result = model_swap_diagnostic(model, bags, n_shifts=n_shifts,
                                                       seed=seed, within_class=within)
                        for target, share in result.items():
                            key = (name, model.memory_mode, target, pairing)
                            shares.setdefault(key, []).append(
                                (share.expression, share.expression_vs_total,
                                 share.slide_vs_total))
    lines = ["| cohort | memory | target | pairs | expression share e/(e+s) | e/t | s/t | runs |",
             "|---|---|---|---|---|---|---|---|"]
    for (name, mode, target, pairing), values in shares.items():
        v = np.array(values)
        cells = [f"{np.nanmean(v[:, i]):.3f} +- {np.nanstd(v[:, i]):.3f}" for i in range(3)]
        lines.append(f"| {name} | {mode} | {target} | {pairing} | " + " | ".join(cells)
                     + f" | {len(v)} |")
    return lines


# ------------------------------------------------------------------------------------------------


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("_public-train", "_public-test"):
        _, mode, src, timing, sep, *argv = sys.argv
        assert sep == "--"
        (_public_train if mode == "_public-train" else _public_test)(Path(src), Path(timing), argv)
        return
    if len(sys.argv) > 1 and sys.argv[1] == "_ours":
        _ours(Path(sys.argv[2]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "report":
        rep = argparse.ArgumentParser(description="tables of the finished seeds of a run")
        rep.add_argument("work", type=Path, help="the --work folder of a (possibly cut) run")
        a = rep.parse_args(sys.argv[2:])
        report(a.work)
        return
    if len(sys.argv) > 1 and sys.argv[1] == "swap":
        swap = argparse.ArgumentParser(description="swap diagnostic of a finished run's students")
        swap.add_argument("work", type=Path, help="the --work folder of a finished run")
        swap.add_argument("--cases", type=int, default=40, help="training cases per fold")
        swap.add_argument("--shifts", type=int, default=3, help="partners per case")
        swap.add_argument("--folds", default="0", help="comma-separated folds")
        swap.add_argument("--threads", type=int, default=1)
        a = swap.parse_args(sys.argv[2:])
        import torch

        torch.set_num_threads(a.threads)
        folds = [int(f) for f in a.folds.split(",")]
        print("\n".join(swap_report(a.work, a.cases, a.shifts, folds)))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--public", type=Path, required=True,
                        help=f"git dir or checkout of {PUBLIC_REPO}")
    parser.add_argument("--work", type=Path, default=None,
                        help="scratch folder (default: a new folder under the temp dir); "
                        "must not exist")
    parser.add_argument("--cohort", default="separable,default",
                        help=f"comma-separated: {', '.join(COHORTS)}")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--cases", type=int, default=120)
    parser.add_argument("--patches", type=int, default=96, help="mean patches per slide")
    parser.add_argument("--feat-dim", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of each implementation (OMP/MKL_NUM_THREADS)")
    parser.add_argument("--public-max-epochs", type=int, default=None,
                        help="theirs: maximum epochs (default: run.sh's 100; early stopping with "
                        "patience 1 usually ends a fold after 3-5)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="(implementation, seed) runs at once (each a child process)")
    parser.add_argument("--epochs", type=int, default=20, help="ours: maximum epochs")
    parser.add_argument("--patience", type=int, default=10, help="ours: early-stopping patience")
    parser.add_argument("--ours-config", default="{}",
                        help="JSON of histokd MoMKD Config fields (default: the defaults)")
    parser.add_argument("--duel", default="small,large",
                        help="speed-only alternating runs: 'small' (the quality cohorts' slide "
                        "size), 'large' (--duel-patches, --duel-feat-dim), or ''")
    parser.add_argument("--duel-repeats", type=int, default=3)
    parser.add_argument("--duel-epochs", type=int, default=3)
    parser.add_argument("--duel-cases", type=int, default=40)
    parser.add_argument("--duel-patches", type=int, default=2000)
    parser.add_argument("--duel-feat-dim", type=int, default=1024)
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    cohorts = [c for c in args.cohort.split(",") if c]
    unknown = set(cohorts) - set(COHORTS)
    if unknown:
        raise SystemExit(f"--cohort: unknown {sorted(unknown)}; expected {list(COHORTS)}")
    work = args.work or Path(tempfile.mkdtemp(prefix="momkd-public-"))
    if args.work is not None:
        work.mkdir(parents=True)  # refuses an existing folder: never overwrite earlier results
    import torch

    src = work / "public_code"
    commit = prepare_public(args.public, src, args.feat_dim)
    print(f"# MoMKD: this project vs {PUBLIC_REPO} @ {commit[:7]} (3 one-line edits), "
          f"torch {torch.__version__}, {args.threads} thread(s) each, work dir {work}")
    print(f"# machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
    summary: dict = {"public_commit": commit, "args": {k: str(v) for k, v in vars(args).items()},
                     "cohorts": {}}
    written = {name: write_cohort(work / name / "data", name, seeds, args.cases, args.patches,
                                  args.feat_dim) for name in cohorts}
    _dump(work / "run.json", {
        "args": summary["args"], "public_commit": commit, "started": time.strftime(
            "%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": _our_commit(),
        "cohorts": {name: asdict(f) for name, (f, _) in written.items()}})
    ours_config = json.loads(args.ours_config)
    jobs = [(name, impl, seed) for name in cohorts for seed in seeds for impl in ("theirs", "ours")]

    def run_job(job: tuple[str, str, int]) -> dict:
        name, impl, seed = job
        files = written[name][0]
        start = time.perf_counter()
        if impl == "theirs":
            out = run_public(src, files, seed, args.threads, work / name / f"public_s{seed}",
                             max_epochs=args.public_max_epochs)
        else:
            out = run_ours(files, seed, args.threads, work / name / f"ours_s{seed}", args.epochs,
                           args.patience, ours_config)
        print(f"# {name} seed {seed} {impl}: {time.perf_counter() - start:.0f} s, load average "
              f"{os.getloadavg()[0]:.1f}", flush=True)
        return out

    # child processes do the work: threads only wait for them (at most --jobs at once); each
    # cohort's tables are printed as soon as its runs are done
    pool = ThreadPoolExecutor(max_workers=args.jobs)
    futures = {job: pool.submit(run_job, job) for job in jobs}
    for name in cohorts:
        files, truth = written[name]
        theirs = [futures[(name, "theirs", seed)].result() for seed in seeds]
        ours = [futures[(name, "ours", seed)].result() for seed in seeds]
        rows = cohort_report(name, files, truth, seeds, theirs, ours, args.patches, args.threads)
        summary["cohorts"][name] = {"files": asdict(files), "theirs": theirs, "ours": ours,
                                    "rows": rows}
        _dump(work / "summary.json", summary)
    pool.shutdown()
    duels = [d for d in args.duel.split(",") if d]
    if set(duels) - {"small", "large"}:
        raise SystemExit(f"--duel: expected small and/or large, got {args.duel!r}")
    summary["speed"] = {}
    for d in duels:
        size = ((args.duel_cases, args.patches, args.feat_dim) if d == "small" else
                (args.duel_cases, args.duel_patches, args.duel_feat_dim))
        summary["speed"][d] = duel(args.public, work, args, f"speed_{d}", *size)
        _dump(work / "summary.json", summary)
    print(f"\nsummary: {work / 'summary.json'}")


if __name__ == "__main__":
    main()
