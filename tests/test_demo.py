"""`histokd demo` end to end on a tiny cohort (the README's main job, scaled down)."""

from __future__ import annotations

import json

from histokd_core.cli import main


def test_demo_runs_end_to_end_and_resumes(tmp_path):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--cases", "10", "--slide-size", "1536", "--folds", "2",
            "--epochs", "2", "--encoder", "hed-texture", "--workers", "0"]
    assert main(args) == 0
    metrics = json.loads((out / "run" / "metrics.json").read_text())
    assert metrics["method"] == "amkd" and metrics["task"] == "survival"
    assert set(metrics["summary"]) == {"teacher", "student", "student_no_kd", "abmil", "omics_only"}
    assert [f["fold"] for f in metrics["folds"]] == [0, 1]
    assert (out / "run" / "km.png").stat().st_size > 0
    overlays = sorted(p.name for p in (out / "overlays").glob("*.png"))
    assert "attention.png" in overlays and any(n.startswith("pathway_") for n in overlays)
    stamp = (out / "run" / "fold_0" / "student.safetensors").stat().st_mtime_ns
    assert main(args) == 0, "a second run must reuse the cohort, features and trained folds"
    assert (out / "run" / "fold_0" / "student.safetensors").stat().st_mtime_ns == stamp
