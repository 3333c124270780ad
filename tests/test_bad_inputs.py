"""Bad inputs a hostile but realistic user tries (issue 13): each gets a clear error naming the
file and field, or a warning counted in the run's ``metrics.json``; nothing is silently dropped
or written as NaN. Every input is generated here, small."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from histokd_core.cli import main
from histokd_core.errors import DataError

METHOD_CONFIG = "models: [abmil, omics_only]\n"


def _train_args(cohort_dir, out, *extra, cohort=None, features=None, omics=None):
    args = ["train", "--method", "baselines",
            "--cohort", str(cohort or cohort_dir / "cohort.csv"),
            "--features", str(features or cohort_dir / "features"),
            "--out", str(out), "--folds", "2", "--epochs", "1", "--batch-size", "8",
            "--device", "cpu", "--threads", "1",
            "--method-config", str(cohort_dir / "method.yaml")]
    if omics is not None:
        args += ["--omics", str(omics)]
    return [*args, *extra]


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory):
    """16 cases, one slide each, d = 8 features in a zarr store, omics with a text column."""
    from histokd_core.synthetic.cohort import make_feature_cohort

    root = tmp_path_factory.mktemp("bad") / "cohort"
    make_feature_cohort(root, n_cases=16, n_patches=8, feat_dim=8, seed=3, with_10x=False)
    (root / "method.yaml").write_text(METHOD_CONFIG)
    omics = pd.read_csv(root / "omics.csv")
    omics.insert(1, "project", "SYN")  # text metadata: left out with a counted warning
    omics.to_csv(root / "omics_project.csv", index=False)
    return root


@pytest.fixture(scope="module")
def run_dir(cohort_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("badrun") / "run"
    assert main(_train_args(cohort_dir, out, omics=cohort_dir / "omics_project.csv")) == 0
    return out


def _copy_store(cohort_dir, tmp_path):
    store = tmp_path / "features"
    shutil.copytree(cohort_dir / "features", store)
    return store


def _poison(store, slide_id: str, value: float, row: int = 3) -> None:
    import zarr

    feats = zarr.open_group(store / f"{slide_id}.zarr" / "20x", mode="r+")["feats"]
    data = feats[:]
    data[row, 1] = value
    feats[:] = data


def _slides(cohort_dir) -> list[str]:
    return list(pd.read_csv(cohort_dir / "cohort.csv")["slide_id"])


def _assert_one_clean_error(err: str, *needles: str) -> None:
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]


# -- non-finite features (rows 1-4): one check where features are read ------------------------

@pytest.mark.parametrize("value", [np.nan, np.inf])
@pytest.mark.parametrize("split", ["train", "test"])
def test_train_refuses_non_finite_features_naming_the_slide(cohort_dir, tmp_path, capsys,
                                                            value, split):
    from histokd_core.cohort import load_cohort, make_folds

    cohort = load_cohort(cohort_dir / "cohort.csv")
    case = make_folds(cohort, n_folds=2, seed=0).cases(0, split)[0]
    slide = cohort.slides_of(case)[0]
    store = _copy_store(cohort_dir, tmp_path)
    _poison(store, slide, value)
    out = tmp_path / "run"
    rc = main(_train_args(cohort_dir, out, features=store))
    err = capsys.readouterr().err
    assert rc == 2
    _assert_one_clean_error(err, f"{slide}.zarr", f"slide {slide}", "non-finite",
                            "NaN" if np.isnan(value) else "inf", "row 3")
    assert not (out / "metrics.json").exists()  # refused before anything trained


def test_predict_refuses_non_finite_features(run_dir, cohort_dir, tmp_path, capsys):
    slide = _slides(cohort_dir)[0]
    store = _copy_store(cohort_dir, tmp_path)
    _poison(store, slide, np.nan, row=0)
    out = tmp_path / "pred.csv"
    rc = main(["predict", "--checkpoint", str(run_dir / "fold_0" / "abmil.safetensors"),
               "--features", str(store), "--slide-id", slide, "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 2 and "risk=" not in captured.out and not out.exists()
    _assert_one_clean_error(captured.err, f"slide {slide}", "non-finite", "row 0")
    rc = main(["predict", "--checkpoint", str(run_dir / "fold_0" / "abmil.safetensors"),
               "--features", str(store), "--all-slides", "--out", str(tmp_path / "all")])
    assert rc == 2 and "non-finite" in capsys.readouterr().err


def test_evaluate_refuses_non_finite_features(run_dir, cohort_dir, tmp_path, capsys):
    slide = _slides(cohort_dir)[5]
    store = _copy_store(cohort_dir, tmp_path)
    _poison(store, slide, -np.inf, row=1)
    rc = main(["evaluate", "--run", str(run_dir), "--cohort", str(cohort_dir / "cohort.csv"),
               "--features", str(store), "--out", str(tmp_path / "ext"), "--device", "cpu"])
    assert rc == 2
    _assert_one_clean_error(capsys.readouterr().err, f"slide {slide}", "non-finite")
    assert not (tmp_path / "ext" / "metrics.json").exists()


def test_h5_and_pt_bags_with_non_finite_features_are_refused(tmp_path):
    import h5py
    import torch

    from histokd_core.features import open_features

    feats = np.ones((5, 4), np.float32)
    feats[2, 0] = np.nan
    coords = np.arange(10).reshape(5, 2) * 256
    with h5py.File(tmp_path / "A.h5", "w") as fh:
        fh["features"] = feats
        fh["coords"] = coords
    torch.save(torch.from_numpy(feats), tmp_path / "B.pt")
    for slide, name in (("A", "A.h5"), ("B", "B.pt")):
        sf = open_features(tmp_path, slide)
        with pytest.raises(DataError, match=rf"{name}: slide {slide} at 20x: 1 of 5 .*row 2"):
            sf.feats()
    with pytest.raises(DataError, match=r"\(x, y\) = \(1024, 1280\)"):
        open_features(tmp_path, "A").feats()


# -- feature dimension ------------------------------------------------------------------------

def test_feature_dimension_mismatch_names_the_file(cohort_dir, tmp_path, capsys):
    from histokd_core.features.store import read_slide_attrs, write_slide_features

    slide = _slides(cohort_dir)[4]
    store = _copy_store(cohort_dir, tmp_path)
    attrs = read_slide_attrs(store, slide)
    shutil.rmtree(store / f"{slide}.zarr")
    write_slide_features(store, slide, "20x", np.zeros((6, 16), np.float32),
                         np.arange(12).reshape(6, 2), {**attrs, "feat_dim": 16})
    rc = main(_train_args(cohort_dir, tmp_path / "run", features=store))
    assert rc == 2
    _assert_one_clean_error(capsys.readouterr().err, f"{slide}.zarr", f"slide {slide}",
                            "d = 16", "d = 8")


# -- omics ------------------------------------------------------------------------------------

def test_omics_strings_in_numeric_columns_are_an_error(cohort_dir, tmp_path, capsys):
    from histokd_core.omics.tables import read_expression

    omics = pd.read_csv(cohort_dir / "omics.csv").astype(object)
    genes = list(omics.columns[1:])
    omics.loc[2, genes[0]] = "NA?"
    omics.loc[6, genes[0]] = "1,234"
    omics.loc[4, genes[3]] = "high"
    bad = tmp_path / "omics.csv"
    omics.to_csv(bad, index=False)
    with pytest.raises(DataError) as info:
        read_expression(bad)
    message = str(info.value)
    assert str(bad) in message and repr(genes[0]) in message
    assert "'NA?'" in message and "'1,234'" in message and "line(s) 4, 8" in message
    rc = main(_train_args(cohort_dir, tmp_path / "run", omics=bad))
    assert rc == 2
    _assert_one_clean_error(capsys.readouterr().err, str(bad), genes[0], "'NA?'")
    # a column of text only is metadata: left out with a warning, never a silent drop
    seen = []
    expr = read_expression(cohort_dir / "omics_project.csv", warn=seen.append)
    assert "project" not in expr.columns and expr.shape[1] == len(genes)
    assert len(seen) == 1 and "'project'" in seen[0]


def test_omics_text_column_is_counted_in_metrics(run_dir):
    m = json.loads((run_dir / "metrics.json").read_text())
    assert len(m["data_warnings"]) == 1 and "'project'" in m["data_warnings"][0]


def test_omics_duplicated_gene_column_is_detected_before_pandas_renames_it(cohort_dir, tmp_path):
    from histokd_core.omics.tables import read_expression

    lines = (cohort_dir / "omics.csv").read_text().splitlines()
    header = lines[0].split(",")
    dup = header[3]
    bad = tmp_path / "dup.tsv"
    rows = [[*r.split(","), r.split(",")[3]] for r in lines[1:]]
    bad.write_text("\n".join("\t".join(r) for r in [[*header, dup], *rows]) + "\n")
    with pytest.raises(DataError, match=rf"dup.tsv: duplicate column name.*'{dup}' "
                                        rf"\(columns 4, {len(header) + 1}\)"):
        read_expression(bad)


# -- cohorts and folds ------------------------------------------------------------------------

def test_semicolon_cohort_csv_says_the_separator_is_wrong(cohort_dir, tmp_path, capsys):
    bad = tmp_path / "cohort.csv"
    pd.read_csv(cohort_dir / "cohort.csv").to_csv(bad, sep=";", index=False)
    rc = main(_train_args(cohort_dir, tmp_path / "run", cohort=bad))
    assert rc == 2
    _assert_one_clean_error(capsys.readouterr().err, str(bad), "semicolon", "comma")


def test_cohort_without_events_is_refused(cohort_dir, tmp_path, capsys):
    bad = tmp_path / "cohort.csv"
    pd.read_csv(cohort_dir / "cohort.csv").assign(event=0).to_csv(bad, index=False)
    rc = main(_train_args(cohort_dir, tmp_path / "run", cohort=bad))
    assert rc == 2
    _assert_one_clean_error(capsys.readouterr().err, str(bad), "no case has an event")
    assert not (tmp_path / "run").exists()


def test_test_fold_with_too_few_events_is_refused(cohort_dir, tmp_path, capsys):
    from histokd_core.cohort import check_evaluable, load_cohort, make_folds

    table = pd.read_csv(cohort_dir / "cohort.csv").head(12)
    small = tmp_path / "small.csv"
    table.to_csv(small, index=False)
    rc = main(_train_args(cohort_dir, tmp_path / "run", "--folds", "5", cohort=small))
    assert rc == 2
    err = capsys.readouterr().err
    _assert_one_clean_error(err, str(small), "test split has", "at least 3 events", "--folds")
    cohort = load_cohort(small)
    folds = make_folds(cohort, n_folds=5, seed=0)
    with pytest.raises(DataError, match="fold"):
        check_evaluable(cohort, folds)
    check_evaluable(cohort, folds, min_test_events=0)  # the stated minimum is a setting


def test_classification_fold_without_a_class_is_refused(cohort_dir, tmp_path, capsys):
    from histokd_core.cohort import Folds, check_evaluable, load_cohort

    table = pd.read_csv(cohort_dir / "cohort.csv")
    table["grade"] = ["high"] * 2 + ["low"] * (len(table) - 2)
    path = tmp_path / "labels.csv"
    table.to_csv(path, index=False)
    cohort = load_cohort(path, task="classification", label_column="grade")
    rows = [(f, c, "test" if (i % 4 == f) else "train")
            for f in range(4) for i, c in enumerate(cohort.case_ids)]
    folds = Folds(pd.DataFrame(rows, columns=["fold", "case_id", "split"]))
    with pytest.raises(DataError, match=r"fold 2's test split \(4 case\(s\)\) has no case of "
                                        r"class\(es\) 'high'"):
        check_evaluable(cohort, folds)
    rc = main(_train_args(cohort_dir, tmp_path / "run", "--task", "classification",
                          "--label-column", "grade", "--folds", "3", cohort=path))
    assert rc == 2
    _assert_one_clean_error(capsys.readouterr().err, str(path), "has no case of class(es) 'high'")


# -- run folders ------------------------------------------------------------------------------

def test_checkpoint_of_another_task_in_a_run_folder(run_dir, cohort_dir, tmp_path, capsys):
    other = tmp_path / "cls_run"
    (tmp_path / "abmil.yaml").write_text("models: [abmil]\n")
    rc = main(_train_args(cohort_dir, other, "--task", "classification",
                          "--method-config", str(tmp_path / "abmil.yaml")))
    assert rc == 0
    mixed = tmp_path / "mixed"
    shutil.copytree(run_dir, mixed)
    for suffix in (".safetensors", ".json"):
        shutil.copy(other / "fold_0" / f"abmil{suffix}", mixed / "fold_0" / f"zz_stray{suffix}")
    rc = main(["evaluate", "--run", str(mixed), "--cohort", str(cohort_dir / "cohort.csv"),
               "--features", str(cohort_dir / "features"), "--out", str(tmp_path / "ext"),
               "--device", "cpu"])
    assert rc == 2
    _assert_one_clean_error(capsys.readouterr().err, "zz_stray.safetensors",
                            "classification checkpoint", "survival run")


# -- extract: interrupted or killed ----------------------------------------------------------

@pytest.fixture(scope="module")
def big_slide(tmp_path_factory):
    """A 4096 px tiled JPEG TIFF of one tissue disc: thousands of 64 px patches, written fast."""
    import tifffile

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:4096, 0:4096]
    disc = (yy - 2048) ** 2 + (xx - 2048) ** 2 < 1900 ** 2
    image = np.full((4096, 4096, 3), 240, np.uint8)
    image[disc] = (rng.integers(-25, 25, (int(disc.sum()), 3)) + [170, 80, 150]).astype(np.uint8)
    path = tmp_path_factory.mktemp("big") / "big.tif"
    tifffile.imwrite(path, image, tile=(512, 512), compression="jpeg", photometric="rgb",
                     resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
    return path


def _start_extract(slide, out):
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "histokd_core.cli", "extract", str(slide), "--out", str(out),
           "--encoder", "hed-texture", "--workers", "1", "--loader-workers", "2",
           "--patch-px", "64", "--magnifications", "20x"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, env=dict(os.environ))


def _wait_for_loaders(proc, timeout: float = 240.0) -> list:
    """Descendants of ``proc`` once the fork server and two tile loaders run."""
    import time

    import psutil

    parent = psutil.Process(proc.pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        kids = parent.children(recursive=True)
        forked = [k for k in kids if k.ppid() != proc.pid and k.ppid() in {c.pid for c in kids}]
        if len(forked) >= 3:  # fork server + 2 loaders below the dask worker
            time.sleep(1.0)
            return parent.children(recursive=True)
        time.sleep(0.2)
    raise AssertionError("the extraction never started its tile loaders")


def _survivors(kids, wait: float = 20.0) -> list:
    import time

    import psutil

    deadline = time.monotonic() + wait
    while True:
        alive = []
        for k in kids:
            try:
                if k.is_running() and k.status() != psutil.STATUS_ZOMBIE:
                    alive.append(k)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.25)


@pytest.mark.parametrize("how", ["SIGINT", "SIGKILL"])
def test_extract_interrupted_or_killed_leaves_no_process_and_a_valid_store(big_slide, tmp_path,
                                                                          how):
    import os
    import signal

    from histokd_core.features import available_slide_ids, open_features

    out = tmp_path / "features"
    proc = _start_extract(big_slide, out)
    try:
        kids = _wait_for_loaders(proc)
        if how == "SIGINT":  # Ctrl-C in a terminal reaches the whole foreground group
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.kill()
        _, err = proc.communicate(timeout=120)  # returns once no child holds its pipes
        left = _survivors(kids)
        assert not left, [(k.pid, k.cmdline()[-2:]) for k in left]
    finally:
        for k in psutil_children_or_empty(proc.pid):
            k.kill()
        if proc.poll() is None:
            proc.kill()
    err = err.decode()
    if how == "SIGINT":
        assert proc.returncode == 130, err
        assert "Traceback" not in err and "Error" not in err, err
        lines = [line for line in err.splitlines() if line.strip() and "extract:" not in line[:8]]
        assert lines == [lines[0]] and "interrupted" in lines[0], err
    else:
        assert proc.returncode == -signal.SIGKILL
    for slide_id in available_slide_ids(out) if out.exists() else []:
        sf = open_features(out, slide_id)  # whatever is there is readable
        for mag in sf.magnifications:
            assert np.isfinite(sf.feats(mag)).all()


def psutil_children_or_empty(pid: int) -> list:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


# -- extract: implausible decoded tiles ------------------------------------------------------

def _tissue_image(size: int = 1024, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    disc = (yy - size // 2) ** 2 + (xx - size // 2) ** 2 < (0.45 * size) ** 2
    image = np.full((size, size, 3), 238, np.uint8)
    image[disc] = (rng.integers(-20, 20, (int(disc.sum()), 3)) + [175, 85, 155]).astype(np.uint8)
    return image


def _write_tiff(path, image, compression: str) -> None:
    import tifffile

    tifffile.imwrite(path, image, tile=(256, 256), compression=compression, photometric="rgb",
                     resolution=(2e4, 2e4), resolutionunit="CENTIMETER")


def _corrupt_j2k_tiles(path, tiles) -> None:
    """Overwrite the second half of the codestream of some TIFF tiles with random bytes (as a
    bad copy does): OpenJPEG decodes them into wrong pixels with only a warning."""
    import tifffile

    with tifffile.TiffFile(path) as tf:
        page = tf.pages[0]
        spans = [(page.dataoffsets[t], page.databytecounts[t]) for t in tiles]
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(1)
    for offset, count in spans:
        data[offset + count // 2 : offset + count] = rng.integers(0, 256, count - count // 2,
                                                                  dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def j2k_slide(tmp_path_factory):
    path = tmp_path_factory.mktemp("j2k") / "broken.tif"
    _write_tiff(path, _tissue_image(), "jpeg2000")
    _corrupt_j2k_tiles(path, [5, 10])  # tiles (1, 1) and (2, 2) of a 4 x 4 grid, in the tissue
    return path


def _extract_args(slide, out, *extra):
    return ["extract", str(slide), "--out", str(out), "--encoder", "hed-texture",
            "--workers", "1", "--loader-workers", "0", "--patch-px", "128",
            "--magnifications", "20x", *extra]


def test_corrupted_jpeg2000_tiles_fail_the_slide_by_default(j2k_slide, tmp_path, capsys):
    rc = main(_extract_args(j2k_slide, tmp_path / "f"))
    out = capsys.readouterr().out
    assert rc == 1 and "0 slide(s) extracted" in out and "1 failed" in out
    failed = [line for line in out.splitlines() if "FAILED" in line][0]
    assert str(j2k_slide) in failed and "8 of" in failed and "implausible" in failed
    assert "JPEG 2000 tile (1, 1) of level 0: no EOC marker" in failed
    assert "(256, 256)" in failed and "--bad-tiles skip" in failed


def test_corrupted_jpeg2000_tiles_skipped_and_slide_marked_degraded(j2k_slide, cohort_dir,
                                                                    tmp_path, capsys):
    from histokd_core.dataset import CohortData
    from histokd_core.features import open_features

    out = tmp_path / "f"
    assert main(_extract_args(j2k_slide, out, "--bad-tiles", "skip")) == 0
    printed = capsys.readouterr().out
    assert "1 degraded (8 implausible patches left out)" in printed
    assert "DEGRADED broken 20x: 8 patch(es) left out at level-0 (256, 256)" in printed
    sf = open_features(out, "broken")
    assert sf.attrs["degraded"] is True
    positions = sorted((x, y) for x, y, _ in sf.attrs["bad_tiles"]["20x"])
    expected = sorted((x, y) for tx, ty in ((1, 1), (2, 2))
                      for x in (256 * tx, 256 * tx + 128) for y in (256 * ty, 256 * ty + 128))
    assert positions == expected
    coords = {tuple(c) for c in sf.coords("20x").tolist()}
    assert not coords & set(expected) and len(coords) == sf.mag_attrs("20x")["n_patches"]
    # a run reading a degraded slide says so, and counts it in metrics.json's data_warnings
    store = _copy_store(cohort_dir, tmp_path)
    import zarr

    slide = _slides(cohort_dir)[2]
    group = zarr.open_group(store / f"{slide}.zarr", mode="r+")
    group.attrs.update(degraded=True, bad_tiles={"20x": [[0, 0, "noise-like pixels"]]})
    data = CohortData(cohort_dir / "cohort.csv", store, n_folds=2)
    assert len(data.warnings) == 1 and f"slide {slide} is degraded" in data.warnings[0]
    assert "1 at 20x" in data.warnings[0]


def test_constant_tile_among_tissue_is_reported(tmp_path, capsys):
    image = _tissue_image(seed=2)
    image[512:768, 256:512] = (175, 85, 155)  # a flat, stain-coloured TIFF tile in the tissue
    path = tmp_path / "flat.tif"
    _write_tiff(path, image, "jpeg")
    rc = main(_extract_args(path, tmp_path / "f"))
    out = capsys.readouterr().out
    assert rc == 1 and "all-constant tile" in out and "(256, 512)" in out


def test_pixel_checks_against_neighbours():
    from histokd_core.features.tile_sanity import implausible_tiles

    coords = np.array([(x, y) for y in range(0, 512, 128) for x in range(0, 512, 128)])
    stats = np.tile([0.0, 40.0, 0.0, 10.0], (16, 1))
    stats[5, 1] = 0.5  # constant
    stats[6, 2] = 0.6  # green
    stats[9, 3] = 40.0  # noise
    stats[10, 0] = 1.0  # decoder error
    stats[0, 1] = 0.5  # constant in a corner whose neighbours are suspect or few: still judged
    bad = implausible_tiles(coords, stats, 128)
    assert set(bad) == {0, 5, 6, 9, 10}
    assert "all-constant" in bad[5] and "green" in bad[6] and "noise" in bad[9]
    assert "could not be decoded" in bad[10]
    lone = implausible_tiles(coords[:1], stats[:1], 128)  # no neighbours: not judged by pixels
    assert lone == {}
    # as rough against smooth neighbours, but coarse texture (its spread far above its
    # pixel-to-pixel differences: a dense lymphoid aggregate) is tissue, not noise
    stats[9, 1] = 90.0
    assert 9 not in implausible_tiles(coords, stats, 128)


def test_a_dense_cell_aggregate_is_not_noise_but_pixel_noise_is():
    """Pixels, not statistics: a tile of dark round nuclei packed on pink stroma (3x rougher than
    the stroma around it) passes; the same tile with independent noise is flagged."""
    from histokd_core.features.tile_sanity import implausible_tiles, tile_stats

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:128, 0:128]

    def stroma():
        t = np.empty((128, 128, 3), np.float64)
        t[:] = (223, 158, 193)
        return t + rng.normal(0, 2, t.shape)

    dense = stroma()
    for cy in range(3, 128, 6):
        for cx in range(3, 128, 6):
            jy, jx = rng.integers(-1, 2, 2)
            dense[(yy - cy - jy) ** 2 + (xx - cx - jx) ** 2 < 6] = (60, 20, 90)
    noise = rng.integers(0, 256, (128, 128, 3))
    tiles = [stroma() for _ in range(9)]
    coords = np.array([(x, y) for y in range(0, 384, 128) for x in range(0, 384, 128)])
    for centre, expected in ((dense, set()), (noise, {4})):
        tiles[4] = centre
        stats = np.stack([tile_stats(np.clip(t, 0, 255).astype(np.uint8)) for t in tiles])
        # both far rougher than the stroma around them (roughness alone flagged both)
        assert stats[4, 3] > max(25.0, 2.5 * np.median(np.delete(stats[:, 3], 4)))
        assert set(implausible_tiles(coords, stats, 128)) == expected
