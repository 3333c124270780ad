"""``histokd train --method subspace`` on gene sets that are not MSigDB Hallmark sets:
``--tumor-genes`` / ``--tme-genes`` as set names or text files, with clear errors."""

from __future__ import annotations

import json

import pytest

from histokd_core.cli import main
from histokd_core.errors import DataError
from histokd_core.omics import read_gene_list, read_gene_sets, write_gmt


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory):
    """A small cohort whose gene sets carry the lab's own names (no Hallmark set)."""
    from histokd_core.synthetic.cohort import make_feature_cohort

    root = tmp_path_factory.mktemp("genes") / "cohort"
    make_feature_cohort(root, n_cases=24, n_patches=12, feat_dim=8, seed=0)
    sets = read_gene_sets(root / "gene_sets.gmt")
    renamed = {f"LAB_SET_{i}": genes for i, genes in enumerate(sets.values())}
    write_gmt(root / "lab_sets.gmt", renamed, overwrite=True)
    tme = list(sets.values())[3] + list(sets.values())[4]  # factor-1 pathways
    (root / "tme.txt").write_text("# TME genes\n" + "\n".join(tme[:8]) + "\n" + ", ".join(tme[8:]))
    return root


def _train(cohort_dir, out, *extra):
    return main(["train", "--method", "subspace", "--cohort", str(cohort_dir / "cohort.csv"),
                 "--features", str(cohort_dir / "features"),
                 "--omics", str(cohort_dir / "omics.csv"),
                 "--gene-sets", str(cohort_dir / "lab_sets.gmt"), "--out", str(out),
                 "--folds", "3", "--only-folds", "0", "--epochs", "1", "--batch-size", "1",
                 "--device", "cpu", "--threads", "1", *extra])


def test_read_gene_list_from_sets_and_files(tmp_path):
    sets = {"A": ["G1", "G2"], "B": ["G2", "G3"], "C": ["G9"]}
    assert read_gene_list("A, B", sets) == ["G1", "G2", "G3"]
    (tmp_path / "g.grp").write_text("# comment\nG5\tG6\nG5, G7  # trailing\n\n")
    assert read_gene_list(tmp_path / "g.grp") == ["G5", "G6", "G7"]
    with pytest.raises(DataError, match=r"--tme-genes: no gene set named 'D', 'E'"):
        read_gene_list("A,D,E", sets, "--tme-genes")
    with pytest.raises(DataError, match="no gene sets were given"):
        read_gene_list("A", None, "--tumor-genes")
    with pytest.raises(DataError, match=r"missing\.txt is not a file"):
        read_gene_list(str(tmp_path / "missing.txt"), sets, "--tumor-genes")
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(DataError, match="lists no gene symbols"):
        read_gene_list(tmp_path / "empty.txt", sets)


def test_subspace_trains_with_user_lists(cohort_dir, tmp_path, capsys):
    rc = _train(cohort_dir, tmp_path / "run", "--tumor-genes", "LAB_SET_0,LAB_SET_1,LAB_SET_2",
                "--tme-genes", str(cohort_dir / "tme.txt"))
    assert rc == 0, capsys.readouterr().err
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert {"teacher", "student"} <= set(metrics["summary"])
    assert (tmp_path / "run" / "fold_0" / "teacher.safetensors").is_file()


def test_subspace_without_lists_or_with_bad_ones_says_which(cohort_dir, tmp_path, capsys):
    assert _train(cohort_dir, tmp_path / "a") == 2
    err = capsys.readouterr().err
    assert "needs MSigDB Hallmark sets" in err and "--tumor-genes and --tme-genes" in err
    assert _train(cohort_dir, tmp_path / "a", "--tumor-genes", "LAB_SET_0") == 2  # TME missing
    assert _train(cohort_dir, tmp_path / "b", "--tumor-genes", "LAB_SET_0,HALLMARK_E2F_TARGETS",
                  "--tme-genes", "LAB_SET_3") == 2
    err = capsys.readouterr().err
    assert "--tumor-genes: no gene set named 'HALLMARK_E2F_TARGETS'" in err
    assert _train(cohort_dir, tmp_path / "c", "--tumor-genes", "LAB_SET_0",
                  "--tme-genes", str(cohort_dir / "nope.txt")) == 2
    assert "--tme-genes" in (err := capsys.readouterr().err) and "nope.txt is not a file" in err
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()
