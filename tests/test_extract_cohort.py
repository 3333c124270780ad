"""``histokd extract``: one dask.distributed task per slide; a corrupt slide is reported, the rest finish."""

from __future__ import annotations

import shutil

import pytest

from histokd_core.cli import main
from histokd_core.cli.extract import expand_slides
from histokd_core.errors import DataError
from histokd_core.features import available_slide_ids, open_features
from histokd_core.synthetic import PlantedRegion, write_synthetic_slide


@pytest.fixture(scope="module")
def cohort_slides(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cohort")
    paths = []
    for i in range(2):
        path = folder / f"case_{i}.tif"
        region = PlantedRegion("tumor" if i else "stroma", 0, 0, 256, 512, 1.0)
        write_synthetic_slide(path, size_hw=(512, 768), mpp=0.5, regions=[region], seed=i, workers=1)
        paths.append(path)
    bad = folder / "case_2.svs"
    data = paths[0].read_bytes()
    bad.write_bytes(data[: len(data) // 3])  # truncated mid-file, as an interrupted copy leaves it
    return folder, [paths[0], bad, paths[1]]


def test_cli_extract_reports_the_corrupt_slide_and_finishes_the_rest(cohort_slides, tmp_path, capsys):
    _, slides = cohort_slides
    out = tmp_path / "features"
    argv = ["extract", *map(str, slides), "--out", str(out), "--encoder", "hed-texture"]
    code = main([*argv, "--workers", "2", "--loader-workers", "0"])
    printed = capsys.readouterr().out
    assert code == 1
    assert "2 slide(s) extracted (2 new" in printed and "1 failed" in printed
    assert "FAILED" in printed and "case_2.svs" in printed and "truncated" in printed
    assert available_slide_ids(out) == ["case_0", "case_1"]
    for name in ("case_0", "case_1"):
        sf = open_features(out, f"{name}.tif")
        assert sf.attrs["complete"] is True and sf.magnifications == ("20x", "10x")
        assert len(sf.feats("20x")) > 0


def test_expand_slides_folders_and_empty_folder(cohort_slides, tmp_path):
    folder, _ = cohort_slides
    assert [p.name for p in expand_slides([folder])] == ["case_0.tif", "case_1.tif", "case_2.svs"]
    with pytest.raises(DataError, match="holds no slide files"):
        expand_slides([tmp_path])


def test_duplicate_slide_ids_are_refused(cohort_slides, tmp_path):
    _, slides = cohort_slides
    twin = tmp_path / "case_0.svs"
    shutil.copy(slides[0], twin)
    code = main(["extract", str(slides[0]), str(twin), "--out", str(tmp_path / "f"), "--encoder", "hed-texture"])
    assert code == 2


@pytest.mark.parametrize("spec", ["resnet-foo", "timm:uni", "torchscript:/no/such/model.pt"])
def test_bad_encoder_spec_fails_before_any_work(cohort_slides, tmp_path, capsys, spec):
    _, slides = cohort_slides
    assert main(["extract", str(slides[0]), "--out", str(tmp_path / "f"), "--encoder", spec]) == 2
    assert "error" in capsys.readouterr().err and not (tmp_path / "f").exists()


def test_existing_scheduler_with_daemonic_workers(cohort_slides, tmp_path):
    from distributed import LocalCluster

    from histokd_core.features import extract_cohort

    _, slides = cohort_slides
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        report = extract_cohort(
            [slides[2]], tmp_path, "hed-texture", magnifications=("10x",), scheduler=cluster.scheduler_address,
            loader_workers=2,  # the worker is daemonic: tiles are read in the worker itself
        )
        assert cluster.scheduler_address and len(cluster.workers) == 1  # ours to close, not extract's
    assert report.ok and [d["slide_id"] for d in report.done] == ["case_1"]
    assert open_features(tmp_path, "case_1").magnifications == ("10x",)
