"""``histokd train / predict / evaluate`` on a small synthetic feature cohort written to disk
(``cohort_dir`` and its trained run ``run_dir``: fixtures of conftest.py)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from histokd_core.cli import main

METHOD = "baselines"


def test_train_writes_run(run_dir, capsys):
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["task"] == "survival" and len(m["folds"]) == 3
    assert set(m["summary"]) == {"abmil", "omics_only"}
    assert (run_dir / "km.png").is_file() and (run_dir / "config.yaml").is_file()
    assert (run_dir / "fold_2" / "omics_only.safetensors").is_file()


def test_train_refuses_existing_other_run(run_dir, cohort_dir, capsys):
    rc = main(
        [
            "train",
            "--method",
            METHOD,
            "--cohort",
            str(cohort_dir / "cohort.csv"),
            "--features",
            str(cohort_dir / "features"),
            "--omics",
            str(cohort_dir / "omics.csv"),
            "--out",
            str(run_dir),
            "--folds",
            "3",
            "--epochs",
            "5",
            "--device",
            "cpu",
        ]
    )
    assert rc == 2
    assert "refusing to overwrite" in capsys.readouterr().err


def test_predict_writes_patch_attention(run_dir, cohort_dir, tmp_path, capsys):
    out = tmp_path / "pred.csv"
    rc = main(
        [
            "predict",
            "--checkpoint",
            str(run_dir / "fold_0" / "abmil.safetensors"),
            "--features",
            str(cohort_dir / "features"),
            "--slide-id",
            "SYN-0003-S1",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    assert "risk=" in capsys.readouterr().out
    table = pd.read_csv(out)
    assert list(table.columns[:4]) == ["x", "y", "patch_size", "attention"]
    assert table["attention"].sum() == pytest.approx(1.0, abs=1e-5)
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["slide_id"] == "SYN-0003-S1" and np.isfinite(summary["risk"])
    # never overwrite silently; omics-only models cannot predict slides
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(run_dir / "fold_0" / "abmil.safetensors"),
                "--features",
                str(cohort_dir / "features"),
                "--slide-id",
                "SYN-0003-S1",
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(run_dir / "fold_0" / "omics_only.safetensors"),
                "--features",
                str(cohort_dir / "features"),
                "--slide-id",
                "SYN-0003-S1",
                "--out",
                str(tmp_path / "p2.csv"),
            ]
        )
        == 2
    )
    assert "needs omics" in capsys.readouterr().err


def test_predict_writes_one_qupath_detection_per_patch(run_dir, cohort_dir, tmp_path, capsys):
    out, qp = tmp_path / "maps.csv", tmp_path / "maps.geojson"
    rc = main(["predict", "--checkpoint", str(run_dir / "fold_0" / "abmil.safetensors"),
               "--features", str(cohort_dir / "features"), "--slide-id", "SYN-0003-S1",
               "--out", str(out), "--qupath", str(qp)])
    assert rc == 0
    table = pd.read_csv(out)
    feats = json.loads(qp.read_text(encoding="utf-8"))["features"]
    assert len(feats) == len(table)
    for f, row in zip(feats, table.itertuples()):
        x, y, p = row.x, row.y, row.patch_size
        assert f["properties"]["objectType"] == "detection"
        assert f["geometry"]["coordinates"][0][0] == [x, y]
        assert f["geometry"]["coordinates"][0][2] == [x + p, y + p]
        assert f["properties"]["measurements"]["attention"] == pytest.approx(row.attention, rel=1e-5)


def test_predict_writes_the_linear_students_risk_contribution(run_dir, cohort_dir, tmp_path):
    """A linear AMKD student's checkpoint: the CSV, the QuPath measurements and the JSON summary
    carry each patch's risk contribution, which sums to the risk minus the bias."""
    import torch

    from histokd_core.bag import DataInfo
    from histokd_core.methods.amkd import Config
    from histokd_core.methods.amkd.linear_student import LinearStudent
    from histokd_core.train.checkpoint import model_state, read_checkpoint, save_checkpoint

    _, meta = read_checkpoint(run_dir / "fold_0" / "abmil.safetensors")
    meta = {**meta, "method": "amkd", "method_config": {}, "stage": "linear_student_no_kd"}
    model = LinearStudent(DataInfo(**meta["data_info"]), Config(), distill=False)
    torch.manual_seed(0)
    torch.nn.init.normal_(model.linear.weight)
    ckpt = save_checkpoint(tmp_path / "linear_student_no_kd.safetensors", model_state(model), meta)
    out, qp = tmp_path / "maps.csv", tmp_path / "maps.geojson"
    assert main(["predict", "--checkpoint", str(ckpt), "--features", str(cohort_dir / "features"),
                 "--slide-id", "SYN-0003-S1", "--out", str(out), "--qupath", str(qp)]) == 0
    table = pd.read_csv(out)
    summary = json.loads(out.with_suffix(".json").read_text())
    assert {"attention", "contribution"} <= set(table.columns)
    assert table["attention"].to_numpy() == pytest.approx(1 / len(table))  # mean pooling
    bias = float(model.linear.bias[0])
    assert table["contribution"].sum() == pytest.approx(summary["risk"] - bias, abs=1e-5)
    assert "log-hazard" in summary["units"]["contribution"]
    feats = json.loads(qp.read_text(encoding="utf-8"))["features"]
    assert [f["properties"]["measurements"]["contribution"] for f in feats] == pytest.approx(
        table["contribution"].tolist(), rel=1e-5)


def test_predict_all_slides_of_a_store(run_dir, cohort_dir, tmp_path, capsys):
    from histokd_core.features import available_slide_ids

    out = tmp_path / "preds"
    args = ["predict", "--checkpoint", str(run_dir / "fold_0" / "abmil.safetensors"),
            "--features", str(cohort_dir / "features"), "--all-slides", "--out", str(out)]
    assert main(args) == 0
    ids = available_slide_ids(cohort_dir / "features")
    assert capsys.readouterr().out.count("risk=") == len(ids)
    table = pd.read_csv(out / "predictions.csv")
    assert sorted(table["slide_id"]) == sorted(ids) and np.isfinite(table["risk"]).all()
    one = json.loads((out / f"{ids[0]}.json").read_text())
    assert one["risk"] == pytest.approx(float(table.set_index("slide_id").loc[ids[0], "risk"]))
    assert main(args) == 2  # nothing replaced without --overwrite
    assert main([*args, "--slide-id", ids[0]]) == 2


def test_cohort_maps_resume_and_report_failures(run_dir, cohort_dir, tmp_path, capsys):
    """``predict --run --cohort --maps``: one dask task per slide; a rerun skips finished slides,
    a slide without features is reported with its reason and the exit code is 1."""
    import zarr

    maps = tmp_path / "maps"
    args = ["predict", "--run", str(run_dir), "--cohort", str(cohort_dir / "cohort.csv"),
            "--features", str(cohort_dir / "features"), "--maps", str(maps), "--workers", "1",
            "--stage", "abmil"]
    assert main(args) == 0
    cohort = pd.read_csv(cohort_dir / "cohort.csv", dtype=str)
    summary = pd.read_csv(maps / "summary.csv", dtype={"slide_id": str})
    assert list(summary["slide_id"]) == list(cohort["slide_id"])
    assert (summary["status"] == "done").all() and summary["out_of_fold"].all()
    scale = json.loads((maps / "colour_scale.json").read_text())["attention"]
    assert scale["mode"] == "cohort" and scale["low"] == 0.0 and scale["high"] >= 2.0
    # the same scale read back for any later slide; a map the cohort maps lack is refused
    from histokd_core.errors import DataError
    from histokd_core.methods.base import Explanation
    from histokd_core.workflows.predict_cohort import check_cohort_scales, run_colour_scales

    scales = run_colour_scales(maps)
    assert set(scales) == {"attention"} and scales["attention"].high == pytest.approx(scale["high"])
    n = 4
    other = Explanation(coords=np.zeros((n, 2), np.int64), patch_size=256, attention=np.full(n, 1 / n),
                        pathway_maps={"HYPOXIA": np.full(n, 1 / n)})
    with pytest.raises(DataError, match="no 'pathway:HYPOXIA' map"):
        check_cohort_scales(scales, other, maps)
    one = maps / str(cohort["slide_id"][0])
    for name in ("maps.csv", "maps.json", "maps.geojson", "attention.png", "done.json"):
        assert (one / name).is_file(), name
    z = zarr.open_group(one / "maps.zarr", mode="r")
    table = pd.read_csv(one / "maps.csv")
    np.testing.assert_allclose(z["attention"][:], table["attention"], rtol=1e-6)
    np.testing.assert_array_equal(z["coords"][:], table[["x", "y"]].to_numpy())
    feats = json.loads((one / "maps.geojson").read_text())["features"]
    assert len(feats) == len(table) and feats[0]["properties"]["objectType"] == "detection"
    # each slide was predicted by the fold that held its case out
    fold = int(summary["fold"][0])
    held = pd.read_csv(run_dir / f"fold_{fold}" / "predictions.csv", dtype={"case_id": str})
    assert summary["case_id"][0] in set(held["case_id"])
    assert json.loads((one / "maps.json").read_text())["checkpoint"].endswith(
        f"fold_{fold}/abmil.safetensors")

    extra = cohort.iloc[:1].copy()
    extra["case_id"], extra["slide_id"] = "NOFEAT", "NOFEAT-S1"
    bigger = tmp_path / "cohort_plus.csv"
    pd.concat([cohort, extra]).to_csv(bigger, index=False)
    capsys.readouterr()
    args[args.index(str(cohort_dir / "cohort.csv"))] = str(bigger)
    assert main(args) == 1
    assert "FAILED NOFEAT-S1" in capsys.readouterr().out
    summary = pd.read_csv(maps / "summary.csv", dtype={"slide_id": str})
    assert len(summary) == len(cohort) + 1
    row = summary.set_index("slide_id").loc["NOFEAT-S1"]
    assert row["status"] == "failed" and "NOFEAT-S1" in row["reason"] and not row["out_of_fold"]
    assert (summary["status"][:-1] == "skipped").all()


def test_evaluate_external_cohort(run_dir, cohort_dir, tmp_path, capsys):
    external = tmp_path / "external.csv"
    pd.read_csv(cohort_dir / "cohort.csv").head(14).to_csv(external, index=False)
    out = tmp_path / "ext"
    rc = main(
        [
            "evaluate",
            "--run",
            str(run_dir),
            "--cohort",
            str(external),
            "--features",
            str(cohort_dir / "features"),
            "--out",
            str(out),
            "--device",
            "cpu",
        ]
    )
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["ensemble"]) == {"abmil"}  # slide-only models only
    assert len(m["folds"]) == 3 and "c_index" in m["folds"][0]["test"]["abmil"]
    assert (out / "km.png").is_file()
    assert "abmil" in capsys.readouterr().out


def test_train_swap_diagnostic_and_monitor_flags(cohort_dir, tmp_path):
    cfg = tmp_path / "amkd.yaml"
    cfg.write_text("dim: 16\nheads: 2\ndim_head: 8\npathway_hidden: 16\n")
    out = tmp_path / "amkd_run"
    rc = main([
        "train", "--method", "amkd", "--cohort", str(cohort_dir / "cohort.csv"),
        "--features", str(cohort_dir / "features"), "--omics", str(cohort_dir / "omics.csv"),
        "--gene-sets", str(cohort_dir / "gene_sets.gmt"), "--out", str(out), "--folds", "3",
        "--only-folds", "0", "--epochs", "1", "--batch-size", "8", "--device", "cpu",
        "--threads", "1", "--method-config", str(cfg), "--monitor", "metric", "--swap-diagnostic",
    ])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["folds"][0]["swap"]["teacher"]) == {"ge_patch", "ge_pathway", "kd"}
    assert 0 <= m["swap"]["teacher"]["ge_patch"]["expression_mean"] <= 1
    meta = json.loads((out / "fold_0" / "student.json").read_text())
    assert meta["monitor"] == "val_c_index"


def test_cohort_scale_of_signed_pathway_maps_keeps_their_unit(tmp_path):
    """A model whose pathway maps are signed (``Explanation.pathway_unit``): maps.zarr records the
    unit, the cohort scale of ``pathway:<name>`` is a contribution scale in it; attention pathway
    maps stay attention; the JSON units name it."""
    from histokd_core.methods.base import Explanation
    from histokd_core.workflows.predict import column_units, explanation_table
    from histokd_core.workflows.predict_cohort import _write_zarr, map_kind, pooled_scales

    coords = np.array([[0, 0], [256, 0], [0, 256]])
    unit = "pathway activity contribution (SD)"

    def slide(name, values, pathway_unit):
        expl = Explanation(coords=coords, patch_size=256, pathway_maps={"E2F": np.asarray(values)},
                           pathway_unit=pathway_unit)
        cols, table = explanation_table(expl)
        (tmp_path / name).mkdir()
        _write_zarr(tmp_path / name / "maps.zarr", expl, cols, table)
        return tmp_path / name, expl

    (a, expl), (b, _) = slide("a", [0.1, -0.3, 0.05], unit), slide("b", [0.2, 0.0, -0.1], unit)
    scale = pooled_scales([a, b], ["pathway:E2F"])["pathway:E2F"]
    assert scale.kind == "contribution" and scale.unit == unit
    assert scale.high == pytest.approx(-scale.low) and scale.high >= 0.2
    assert column_units(expl, explanation_table(expl)[0])["pathway:E2F"].startswith(unit)
    assert map_kind("pathway:E2F") == "attention" and map_kind("pathway:E2F", unit) == "contribution"
    c, attn = slide("c", [0.5, 0.25, 0.25], None)
    assert pooled_scales([c], ["pathway:E2F"])["pathway:E2F"].kind == "attention"
    assert "pathway:E2F" not in column_units(attn, explanation_table(attn)[0])


def test_cohort_scale_of_a_contribution_keeps_the_models_unit(tmp_path):
    """Each slide's maps.zarr records the model's contribution unit; the cohort scale pooled over
    the slides carries it (and says so when slides differ, e.g. the predicted class of a K > 2
    student), and a slide drawn on it keeps it."""
    from histokd_core.explain.colour import map_scale
    from histokd_core.methods.base import Explanation
    from histokd_core.workflows.predict import explanation_table
    from histokd_core.workflows.predict_cohort import _write_zarr, pooled_scales

    coords = np.array([[0, 0], [256, 0], [0, 256]])

    def slide(name, values, unit):
        expl = Explanation(coords=coords, patch_size=256, contribution=np.asarray(values),
                           contribution_unit=unit)
        cols, table = explanation_table(expl)
        (tmp_path / name).mkdir()
        _write_zarr(tmp_path / name / "maps.zarr", expl, cols, table)
        return tmp_path / name

    odds = "log-odds contribution (class 1 vs class 0)"
    dirs = [slide("a", [0.1, -0.2, 0.05], odds), slide("b", [0.3, 0.0, -0.1], odds)]
    scale = pooled_scales(dirs, ["contribution"])["contribution"]
    assert scale.unit == odds and scale.high == pytest.approx(-scale.low)
    assert map_scale(np.array([0.1]), "contribution", "cohort", scale).unit == odds
    mixed = [slide(f"k{k}", [0.2, 0.1, 0.0], f"centred-logit contribution (predicted class {k})")
             for k in (1, 2)]
    assert "2 units, one per slide" in pooled_scales(mixed, ["contribution"])["contribution"].unit
