"""What users of the authors' MoMKD code run into, checked absent here (issue 12).

The obstacles are listed in ``docs/benchmarks.md`` ("MoMKD beside the authors' code"); each test
names the one it covers. The cohort is what a CLAM user brings: one ``.h5`` per slide
(``features``, ``coords``), a label table with string labels, an omics table, case ids that are
not TCGA barcodes (short ones, and two that share their first 12 characters), a feature size that
is neither 1024 nor 1536, and slides with 1 and 3 patches. It is trained once through the command
line (``histokd train --method momkd``) with tiny sizes.
"""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pandas as pd
import psutil
import pytest
import torch
import yaml

from histokd_core.cli import main
from histokd_core.cohort import load_cohort, make_folds
from histokd_core.dataset import CohortData
from histokd_core.errors import DataError
from histokd_core.nn.graph import knn_graph
from histokd_core.train import TrainConfig, load_model, run_cv
from histokd_core.train.callbacks import Callback
from histokd_core.train.metrics import classification_metrics
from histokd_core.workflows.inference import read_slide_bag

FEAT = 24  # neither UNI (1024) nor UNI2 (1536)
GENES = 6
TWINS = ("PATIENT-0001-A", "PATIENT-0001-B")  # same first 12 characters
TINY = {"n_components": 3, "wsi_dim": 16, "shared_dim": 8, "omics_dim": 16, "cls_hidden": 8,
        "init_samples": 500, "compare_memory_updates": False, "baselines": []}


def case_ids() -> list[str]:
    return [*TWINS, "P1", "P2", "X", *[f"case-{i}" for i in range(17)]]


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("clam_user")
    rng = np.random.default_rng(0)
    (root / "h5").mkdir()
    ids = case_ids()
    rows = []
    for i, case in enumerate(ids):
        label = "pos" if i % 2 else "neg"
        n = {2: 1, 3: 3}.get(i, int(rng.integers(10, 30)))  # slides "P2" and "X": 1 and 3 patches
        feats = rng.standard_normal((n, FEAT)).astype(np.float32) + (0.8 if i % 2 else 0.0)
        cells = rng.choice(100, size=n, replace=False)
        coords = np.stack([cells % 10, cells // 10], 1).astype(np.int64) * 512
        slide = f"{case}.svs"
        with h5py.File(root / "h5" / f"{case}.h5", "w") as h5:
            h5["features"] = feats
            h5["coords"] = coords
            h5["coords"].attrs["patch_size"] = 512
            h5["coords"].attrs["patch_level"] = 0
        rows.append((case, slide, label))
    pd.DataFrame(rows, columns=["case_id", "slide_id", "status"]).to_csv(
        root / "labels.csv", index=False)
    omics = pd.DataFrame(rng.standard_normal((len(ids), GENES)), columns=[f"G{j}" for j in
                         range(GENES)], index=pd.Index(ids, name="case_id"))
    omics.loc[TWINS[1]] += 5.0  # the twins' expression differs a lot
    omics.to_csv(root / "omics.csv")
    (root / "momkd.yaml").write_text(yaml.safe_dump(TINY))
    return root


def train_argv(cohort_dir, out, *extra) -> list[str]:
    return ["train", "--method", "momkd", "--task", "classification", "--label-column", "status",
            "--cohort", str(cohort_dir / "labels.csv"), "--features", str(cohort_dir / "h5"),
            "--omics", str(cohort_dir / "omics.csv"), "--method-config",
            str(cohort_dir / "momkd.yaml"), "--out", str(out), "--epochs", "2", "--folds", "4",
            "--only-folds", "0,1", "--device", "cpu", "--threads", "1", *extra]


@pytest.fixture(scope="module")
def trained(cohort_dir, tmp_path_factory):
    """One CLI run from an empty working directory (no ./log, no ./splits)."""
    cwd = tmp_path_factory.mktemp("empty_cwd")
    out = tmp_path_factory.mktemp("runs") / "run"
    features_before = {p.name: p.stat().st_mtime_ns for p in (cohort_dir / "h5").iterdir()}
    old = os.getcwd()
    os.chdir(cwd)
    try:
        assert main(train_argv(cohort_dir, out)) == 0
    finally:
        os.chdir(old)
    return {"out": out, "cwd": cwd, "features_before": features_before}


def test_any_feature_size_no_log_folder_no_split_script_no_graph_files(trained, cohort_dir):
    """Obstacles: feature dimension hard-coded to 1536; ``./log/`` must exist; no split script and a
    bare AssertionError without ``./splits``; ``graph.py`` duplicates every feature file."""
    out = trained["out"]
    meta = json.loads((out / "fold_0" / "student.json").read_text())
    assert meta["data_info"]["feat_dim"] == FEAT
    assert list(trained["cwd"].iterdir()) == []  # nothing written where the command ran
    after = {p.name: p.stat().st_mtime_ns for p in (cohort_dir / "h5").iterdir()}
    assert after == trained["features_before"]  # no graph files, features untouched
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["folds"] == [0, 1]  # folds made for the user (stratified, seeded)


def test_missing_split_files_are_named(cohort_dir, tmp_path):
    """Obstacle: a missing splits folder ends in a bare ``AssertionError``."""
    cohort = load_cohort(cohort_dir / "labels.csv", "classification", "status")
    with pytest.raises(DataError, match="nowhere"):
        CohortData(cohort, cohort_dir / "h5", folds=tmp_path / "nowhere", task="classification")


def test_case_ids_of_any_length_keep_their_own_omics(cohort_dir):
    """Obstacle: omics files are matched to cases by their first 12 characters (TCGA barcode
    length): other ids drop every sample, and ids sharing 12 characters would share a file."""
    cohort = load_cohort(cohort_dir / "labels.csv", "classification", "status")
    data = CohortData(cohort, cohort_dir / "h5", omics=cohort_dir / "omics.csv",
                      task="classification", n_folds=4)
    fold = data.fold(0)
    bags = {b.case_id: b for b in fold.train + fold.val + fold.test}
    assert sorted(bags) == sorted(case_ids())  # no case dropped, short ids included
    raw = pd.read_csv(cohort_dir / "omics.csv", index_col="case_id")
    a, b = (bags[t].omics.numpy() for t in TWINS)
    # each twin gets its own row, standardised with the training fold's statistics
    scale = fold.standardizer.transform(raw.loc[list(TWINS)]).to_numpy()
    np.testing.assert_allclose(a, scale[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(b, scale[1], rtol=1e-5, atol=1e-5)
    assert np.abs(a - b).mean() > 1.0


@pytest.mark.parametrize("damage", ["missing", "unreadable"])
def test_missing_or_unreadable_slide_stops_with_its_name(cohort_dir, tmp_path, damage, capsys):
    """Obstacle: a missing or unreadable ``.h5`` is replaced by a dummy, skipped at test time,
    and the run still reports metrics with exit code 0."""
    h5 = tmp_path / "h5"
    h5.mkdir()
    for p in (cohort_dir / "h5").iterdir():
        (h5 / p.name).write_bytes(p.read_bytes())
    victim = h5 / "P1.h5"
    if damage == "missing":
        victim.unlink()
    else:
        victim.write_bytes(b"not an hdf5 file")
    argv = train_argv(cohort_dir, tmp_path / "run")
    argv[argv.index("--features") + 1] = str(h5)
    assert main(argv) != 0
    err = capsys.readouterr().err
    assert "P1" in err
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_reported_metrics_are_held_out_test_metrics_at_the_arg_max(trained, cohort_dir):
    """Obstacles: the only summary printed is the best validation AUC (selection-biased); test
    slides silently skipped; accuracy/F1 at a threshold tuned on ~24 validation slides."""
    out = trained["out"]
    metrics = json.loads((out / "metrics.json").read_text())
    folds = make_folds(load_cohort(cohort_dir / "labels.csv", "classification", "status"), 4)
    for entry in metrics["folds"]:
        fold = entry["fold"]
        preds = pd.read_csv(out / f"fold_{fold}" / "predictions.csv")
        preds = preds[preds["model"] == "student"]
        history = json.loads((out / "history.json").read_text())[f"fold_{fold}"]["student"]
        # every test case of the fold is predicted, none twice, nothing else
        assert sorted(preds["case_id"]) == sorted(folds.cases(fold, "test"))
        p = preds["prob_positive"].to_numpy()
        expected = classification_metrics(preds["label"].to_numpy(), np.stack([1 - p, p], 1))
        for key in ("auc", "acc", "f1"):
            got, want = entry["test"]["student"][key], expected[key]
            assert (np.isnan(got) and np.isnan(want)) or got == pytest.approx(want, abs=1e-6)
        # the arg-max class: no threshold is fitted on the validation split
        assert "threshold" not in json.dumps(entry)
        assert all("val_auc" in epoch for epoch in history)  # validation is logged, not reported
    summary = metrics["summary"]["student"]
    aucs = [e["test"]["student"]["auc"] for e in metrics["folds"]]
    assert summary["auc_mean"] == pytest.approx(np.nanmean(aucs))


def test_checkpoint_rebuilds_with_its_own_sizes(trained, cohort_dir):
    """Obstacle: ``test.py``'s defaults (``--num_memory 4``, dimensions) differ from training's and
    must be repeated by hand."""
    model, meta = load_model(trained["out"] / "fold_0" / "student.safetensors")
    assert model.memory.n_components == TINY["n_components"]
    assert meta["method_config"]["shared_dim"] == TINY["shared_dim"]
    cohort = load_cohort(cohort_dir / "labels.csv", "classification", "status")
    data = CohortData(cohort, cohort_dir / "h5", omics=cohort_dir / "omics.csv",
                      task="classification", n_folds=4)
    bag = next(b for b in data.fold(0).train if b.case_id == "P2")  # a one-patch slide
    bag.omics = None
    with torch.no_grad():
        pred = model.predict(bag)
    assert pred.logits.shape == (2,) and torch.isfinite(pred.logits).all()


def test_slides_with_few_patches_get_a_graph():
    """Obstacle: slides with 8 patches or fewer get no graph in ``graph.py``."""
    coords = np.array([[0, 0], [256, 0], [0, 256]])
    edges = knn_graph(coords, 8)
    assert edges.shape == (2, 6)  # every other patch is a neighbour
    assert knn_graph(coords[:1], 8).shape == (2, 0)  # one patch: GATv2's self-loop only


def test_one_label_parser_and_binary_labels_checked(cohort_dir, tmp_path, capsys):
    """Obstacles: labels parsed differently by training (case-insensitive) and testing
    (case-sensitive); every value other than ``--positive_label`` silently becomes 0."""
    table = pd.read_csv(cohort_dir / "labels.csv")
    cohort = load_cohort(cohort_dir / "labels.csv", "classification", "status")
    assert cohort.class_names == ["neg", "pos"]  # one mapping, stored with the run
    table.loc[0, "status"] = "Pos"  # a typo is a third class, not a silent negative
    table.to_csv(tmp_path / "labels.csv", index=False)
    argv = train_argv(cohort_dir, tmp_path / "run")
    argv[argv.index("--cohort") + 1] = str(tmp_path / "labels.csv")
    assert main(argv) != 0
    err = capsys.readouterr().err  # refused by the fold check (one 'Pos' case) or the model
    assert "class(es) 'Pos'" in err or "n_classes = 2" in err


def test_training_runs_in_one_process(cohort_dir, tmp_path):
    """Obstacle: 8 (training) + 4 (validation) hard-coded loader workers: a process tree of
    several GB on a small machine for a 1.7 M-parameter model."""
    def children() -> set[int]:
        return {p.pid for p in psutil.Process().children(recursive=True)}

    before = children()  # pytest-xvfb's X server
    seen: list[set[int]] = []

    class Children(Callback):
        def on_step(self, progress, logs) -> None:
            seen.append(children() - before)

    cohort = load_cohort(cohort_dir / "labels.csv", "classification", "status")
    data = CohortData(cohort, cohort_dir / "h5", omics=cohort_dir / "omics.csv",
                      task="classification", n_folds=4)
    run_cv("momkd", TINY, data, tmp_path / "run", TrainConfig(epochs=1, device="cpu"),
           folds=[0], callbacks=[Children()])
    assert seen and not set().union(*seen)  # no new process at any step


def test_rerun_never_overwrites_earlier_results(trained, cohort_dir, capsys):
    """Obstacle: result folders are overwritten when a run is repeated."""
    out = trained["out"]
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert main(train_argv(cohort_dir, out)) != 0  # same run again, without --resume
    assert "--resume" in capsys.readouterr().err
    assert main(train_argv(cohort_dir, out, "--seed", "1")) != 0  # another run, same folder
    assert "refusing to overwrite" in capsys.readouterr().err
    after = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert after == before


def test_early_stopping_patience_is_read(cohort_dir, tmp_path):
    """Obstacle: ``--early_stopping`` is parsed but never read. Here ``--patience`` stops a stage
    once validation AUC has not improved for that many epochs."""
    out = tmp_path / "run"
    argv = train_argv(cohort_dir, out)
    argv[argv.index("--epochs") + 1] = "40"
    assert main([*argv, "--patience", "1"]) == 0
    history = json.loads((out / "history.json").read_text())
    lengths = []
    for fold in history.values():
        epochs = fold["student"]
        lengths.append(len(epochs))
        if len(epochs) < 40:  # stopped: the last epoch did not beat the best before it
            aucs = [e["val_auc"] for e in epochs]
            assert not aucs[-1] > max(aucs[:-1])
    assert min(lengths) < 40


def test_features_of_another_width_are_named(trained, cohort_dir, tmp_path):
    """Obstacle: dimensions hard-coded in the model code (1536) fail deep inside a matrix product.
    Features of another width stop with both widths: in training (the folder and the widths) and at
    prediction (the slide's file and the checkpoint's width)."""
    h5 = tmp_path / "h5"
    h5.mkdir()
    for p in (cohort_dir / "h5").iterdir():
        (h5 / p.name).write_bytes(p.read_bytes())
    with h5py.File(h5 / "P1.h5", "r+") as f:
        feats = f["features"][:]
        del f["features"]
        f["features"] = np.concatenate([feats, feats[:, :4]], axis=1)
    cohort = load_cohort(cohort_dir / "labels.csv", "classification", "status")
    with pytest.raises(DataError, match=rf"another dimension than the \d+ others \(d = {FEAT}\): \S*P1\.h5 \(slide P1, d = {FEAT + 4}\)"):
        data = CohortData(cohort, h5, omics=cohort_dir / "omics.csv", task="classification",
                          n_folds=4)
        data.fold(0)
    _, meta = load_model(trained["out"] / "fold_0" / "student.safetensors")
    with pytest.raises(DataError, match=rf"d = {FEAT + 4}.*d = {FEAT}"):
        read_slide_bag(h5, "P1", meta)  # what `histokd predict` and the napari dock read through
