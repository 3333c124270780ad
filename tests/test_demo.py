"""`histokd demo` end to end on a tiny cohort (the README's main job, scaled down)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from histokd_core.cli import main


def test_demo_runs_end_to_end_and_resumes(tmp_path, caplog):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--cases", "10", "--slide-size", "1536", "--folds", "2",
            "--epochs", "2", "--encoder", "hed-texture", "--workers", "0"]
    with caplog.at_level("INFO", logger="histokd.demo"):
        assert main(args) == 0
    assert "student - student_no_kd" in caplog.text and "student - abmil" in caplog.text
    metrics = json.loads((out / "run" / "metrics.json").read_text())
    assert metrics["method"] == "amkd" and metrics["task"] == "survival"
    assert set(metrics["summary"]) == {"teacher", "student", "student_no_kd", "linear_student",
                                       "linear_student_no_kd", "abmil", "omics_only"}
    assert [f["fold"] for f in metrics["folds"]] == [0, 1]
    assert (out / "run" / "km.png").stat().st_size > 0
    overlays = sorted(p.name for p in (out / "overlays").glob("*.png"))
    assert "attention.png" in overlays and any(n.startswith("pathway_") for n in overlays)
    stamp = (out / "run" / "fold_0" / "student.safetensors").stat().st_mtime_ns
    assert main(args) == 0, "a second run must reuse the cohort, features and trained folds"
    assert (out / "run" / "fold_0" / "student.safetensors").stat().st_mtime_ns == stamp


def _metrics(student, no_kd, abmil):
    folds = [{"fold": i, "test": {"teacher": {"c_index": 0.8}, "student": {"c_index": s},
                                  "student_no_kd": {"c_index": n}, "abmil": {"c_index": a}}}
             for i, (s, n, a) in enumerate(zip(student, no_kd, abmil))]
    summary = {m: {"c_index_mean": float(np.mean([f["test"][m]["c_index"] for f in folds])),
                   "c_index_std": float(np.std([f["test"][m]["c_index"] for f in folds]))}
               for m in ("teacher", "student", "student_no_kd", "abmil")}
    return {"task": "survival", "folds": folds, "summary": summary}


def test_paired_difference_by_hand():
    from histokd_core.train.results import paired_difference

    m = _metrics([0.6, 0.7, 0.5], [0.5, 0.6, 0.55], [0.4, 0.5, 0.3])
    d = paired_difference(m, "student", "student_no_kd")
    # differences 0.1, 0.1, -0.05: mean 0.05, sample sd sqrt(0.0075), SE sqrt(0.0075 / 3) = 0.05
    assert d == {"mean": pytest.approx(0.05), "se": pytest.approx(0.05), "better": 2, "n": 3}
    m["folds"][2]["test"]["student"]["c_index"] = float("nan")
    assert paired_difference(m, "student", "student_no_kd")["n"] == 2
    assert paired_difference(m, "student", "missing")["n"] == 0


def test_demo_table_puts_models_side_by_side_with_paired_differences():
    from histokd_core.cli.demo import comparison_table

    text = comparison_table(_metrics([0.6, 0.7, 0.5], [0.5, 0.6, 0.55], [0.4, 0.5, 0.35]))
    lines = text.splitlines()
    header = next(ln for ln in lines if ln.startswith("model"))
    assert "fold 0" in header and "fold 2" in header
    student = next(ln for ln in lines if ln.startswith("student "))
    assert "0.600 +- 0.082" in student and "0.700" in student and "slides, distilled" in student
    no_kd = next(ln for ln in lines if "student - student_no_kd" in ln)
    assert "+0.050 +- 0.050" in no_kd and "2/3 folds better" in no_kd
    assert "no measurable difference" in no_kd
    abmil = next(ln for ln in lines if "student - abmil" in ln)
    assert "+0.183 +- 0.017" in abmil  # 0.2, 0.2, 0.15: SE sqrt(1/1200 / 3)
    assert "3/3" in abmil and "student is better" in abmil
