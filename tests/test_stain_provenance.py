"""The stain normalisation and preprocessing version travel with the features and the model:
stores refuse to mix settings, checkpoints record the reference, prediction / evaluation refuse
features made another way, and "extract now" normalises a new slide with the stored reference."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import zarr

from histokd_core.bag import Bag, DataInfo
from histokd_core.errors import DataError
from histokd_core.features import extract_slide, get_encoder, open_features
from histokd_core.features.stain import (
    REFERENCE_FILE,
    StainReference,
    cohort_reference,
    load_reference,
    resolve_reference,
)
from histokd_core.features.store import (
    PREPROCESSING_VERSION,
    check_store,
    slide_group_path,
    write_slide_features,
)
from histokd_core.synthetic import PlantedRegion, write_synthetic_slide
from histokd_core.synthetic.stain import StainShift, write_restained_slide
from histokd_core.train import TrainConfig, run_cv

MACENKO = StainReference(
    "macenko", {"HERef": [[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]], "maxCRef": [1.9705, 1.0308]},
    64, "test reference",
)


def _group(root, slide_id, **attrs):
    """A one-magnification slide group with the given slide attrs (written as a store would)."""
    rng = np.random.default_rng(len(slide_id))
    write_slide_features(root, slide_id, "20x", rng.normal(size=(4, 3)), np.arange(8).reshape(4, 2) * 256,
                         {"encoder_id": "enc", "weights_hash": "", "patch_px": 256, **attrs})


def _retag(group, **attrs):
    """Change slide attrs in place, as a store written by another histokd would have them."""
    g = zarr.open_group(group, mode="r+")
    merged = {k: v for k, v in g.attrs.items() if k not in attrs or attrs[k] is not None}
    merged.update({k: v for k, v in attrs.items() if v is not None})
    g.attrs.put(merged)


def test_store_refuses_other_preprocessing_or_stain_and_names_both(tmp_path):
    root = tmp_path / "store"
    now = {"stain": "none", "preprocessing": PREPROCESSING_VERSION}
    _group(root, "old")  # written without the attrs: a store from before they were recorded
    with pytest.raises(DataError) as err:
        check_store(root, now, ["new"])
    msg = str(err.value)
    assert "'preprocessing': 1" in msg and f"'preprocessing': {PREPROCESSING_VERSION}" in msg
    assert "old" in msg and "--overwrite" in msg
    check_store(root, now, ["old", "new"], overwrite=True)  # its slide is extracted again
    with pytest.raises(DataError, match="not in this run.*old"):
        check_store(root, now, ["new"], overwrite=True)  # would stay behind, mixed
    _group(root, "norm", stain=MACENKO.id, preprocessing=PREPROCESSING_VERSION)
    with pytest.raises(DataError) as err:
        check_store(root, {"stain": MACENKO.id, "preprocessing": PREPROCESSING_VERSION}, ["x"])
    assert "'stain': 'none'" in str(err.value) and "old" in str(err.value)
    check_store(tmp_path / "absent", now, ["a"])  # a new store: nothing to compare


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    """Two small synthetic slides of two sites (the second re-stained)."""
    folder = tmp_path_factory.mktemp("prov")
    region = PlantedRegion("tumor", 200, 300, 600, 700)
    a = write_synthetic_slide(folder / "pa.tif", (768, 1024), mpp=0.5, regions=[region], seed=3, workers=1)
    b = write_restained_slide(a.path, folder / "pb.tif", StainShift.tilted(1.0))
    return a.path, b


def test_resuming_a_slide_of_another_preprocessing_version_is_refused_or_redone(slides, tmp_path):
    enc = get_encoder("hed-texture")
    root = tmp_path / "feats"
    extract_slide(slides[0], root, enc, magnifications=("20x",), num_workers=0)
    sf = open_features(root, "pa")
    assert sf.attrs["preprocessing"] == PREPROCESSING_VERSION and sf.attrs["stain"] == "none"
    group = slide_group_path(root, "pa")
    _retag(group, preprocessing=None, complete=False)  # an older store, interrupted
    with pytest.raises(DataError, match="preprocessing"):
        extract_slide(slides[0], root, enc, magnifications=("20x", "10x"), num_workers=0)
    res = extract_slide(slides[0], root, enc, magnifications=("20x",), num_workers=0, overwrite=True)
    assert res.status == "done" and open_features(root, "pa").attrs["preprocessing"] == PREPROCESSING_VERSION


def test_cohort_extraction_refuses_a_mixed_store_before_extracting(slides, tmp_path):
    from histokd_core.features import extract_cohort

    root = tmp_path / "feats"
    _group(root, "elsewhere", stain="none", preprocessing=1)
    with pytest.raises(DataError, match="elsewhere"):
        extract_cohort([slides[0]], root, encoder="hed-texture", magnifications=("20x",))
    with pytest.raises(DataError, match="not in this run"):
        extract_cohort([slides[0]], root, encoder="hed-texture", overwrite=True)
    assert not slide_group_path(root, "pa").exists()
    # --stain none into a store normalised with a reference: refused, naming the reference
    (root / REFERENCE_FILE).write_text(json.dumps(MACENKO.to_attrs()))
    with pytest.raises(DataError, match=MACENKO.id):
        resolve_reference([slides[0]], "none", root)


def _checkpoint(tmp_path, info: DataInfo):
    """A trained ABMIL checkpoint (one epoch on random bags) whose meta records ``info``."""
    rng = np.random.default_rng(0)
    coords = torch.from_numpy((np.stack(np.mgrid[0:4, 0:4], -1).reshape(-1, 2) * 256).astype(np.int64))
    bags = [Bag(case_id=f"c{i}", feats=torch.from_numpy(rng.normal(size=(16, info.feat_dim)).astype(np.float32)),
                coords=coords, patch_size=256, label=i % 2) for i in range(8)]
    data = SimpleNamespace(n_folds=1, fold=lambda i: SimpleNamespace(
        train=bags[:4], val=bags[4:6], test=bags[6:], info=info))
    run_cv("baselines", {"models": ["abmil"]}, data, tmp_path / "run",
           TrainConfig(epochs=1, batch_size=4, seed=0, device="cpu", num_threads=1), folds=[0])
    return tmp_path / "run" / "fold_0" / "abmil.safetensors"


def test_extract_now_normalises_with_the_checkpoint_reference(slides, tmp_path):
    from histokd_core.workflows import analyse_slide

    enc = get_encoder("hed-texture")
    ref = cohort_reference([slides[0]], "macenko", per_slide=8)
    info = DataInfo(task="classification", feat_dim=enc.dim, n_classes=2, encoder_id=enc.id,
                    stain=ref.id, stain_reference=ref.to_attrs(), preprocessing=PREPROCESSING_VERSION)
    ckpt = _checkpoint(tmp_path, info)
    # the reference travels in the checkpoint (safetensors header and the JSON beside it)
    assert load_reference(ckpt) == ref and load_reference(ckpt.with_suffix(".json")) == ref

    out = tmp_path / "now"
    analysis = analyse_slide(ckpt, slide_path=slides[1], extract_to=out, device="cpu")
    sf = open_features(out, "pb")
    assert sf.attrs["stain"] == ref.id and sf.attrs["stain_reference"]["params"] == ref.params
    assert load_reference(out / REFERENCE_FILE) == ref
    direct = tmp_path / "direct"
    extract_slide(slides[1], direct, enc, magnifications=("20x",), num_workers=0, stain=ref)
    # same normalisation and encoder; float sums may differ in order between the two paths
    np.testing.assert_allclose(sf.feats("20x"), open_features(direct, "pb").feats("20x"), rtol=1e-5, atol=1e-6)
    plain = tmp_path / "plain"
    extract_slide(slides[1], plain, enc, magnifications=("20x",), num_workers=0)
    assert not np.allclose(sf.feats("20x"), open_features(plain, "pb").feats("20x"))
    assert analysis.explanation.coords.shape[0] == len(sf.coords("20x"))

    # features made without the model's normalisation: refused, naming both settings
    with pytest.raises(DataError) as err:
        analyse_slide(ckpt, features=plain, slide_id="pb", device="cpu")
    assert ref.id in str(err.value) and "stain normalisation none" in str(err.value)
    assert f"--stain-reference {ckpt}" in str(err.value)
    # extracting now into a folder of unnormalised features: refused before extracting
    with pytest.raises(DataError, match="'stain': 'none'"):
        analyse_slide(ckpt, slide_path=slides[0], extract_to=plain, device="cpu")
    assert not slide_group_path(plain, "pa").exists()
    # the external cohort path: --stain-reference <checkpoint>
    assert resolve_reference([slides[1]], "macenko", tmp_path / "ext", ckpt) == ref
    with pytest.raises(DataError, match="holds a macenko stain reference, but --stain reinhard"):
        resolve_reference([slides[1]], "reinhard", tmp_path / "ext", ckpt)


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory):
    """A synthetic feature cohort as extracted (``plain``) and as if normalised (``normalised``)."""
    from histokd_core.synthetic.cohort import make_feature_cohort

    root = tmp_path_factory.mktemp("provcohort") / "cohort"
    make_feature_cohort(root, n_cases=16, n_patches=8, feat_dim=8, seed=0)
    normalised = root / "normalised"
    shutil.copytree(root / "features", normalised)
    for group in normalised.glob("*.zarr"):
        _retag(group, stain=MACENKO.id, stain_reference=MACENKO.to_attrs(), preprocessing=PREPROCESSING_VERSION)
    return SimpleNamespace(root=root, plain=root / "features", normalised=normalised)


def test_training_records_the_stain_and_evaluation_refuses_other_features(cohorts, tmp_path):
    from histokd_core.train import read_checkpoint
    from histokd_core.workflows import evaluate_run, predict_slide, train_cohort

    run = tmp_path / "run"
    train_cohort("baselines", cohorts.root / "cohort.csv", cohorts.normalised, run,
                 method_config={"models": ["abmil"]}, n_folds=2, only_folds=[0], epochs=1,
                 batch_size=4, device="cpu", threads=1)
    ckpt = run / "fold_0" / "abmil.safetensors"
    _, meta = read_checkpoint(ckpt)
    info = meta["data_info"]
    assert info["stain"] == MACENKO.id and info["preprocessing"] == PREPROCESSING_VERSION
    assert StainReference.from_attrs(info["stain_reference"]) == MACENKO
    assert json.loads(ckpt.with_suffix(".json").read_text())["data_info"]["stain"] == MACENKO.id

    slide = pd.read_csv(cohorts.root / "cohort.csv")["slide_id"].iloc[0]
    predict_slide(ckpt, cohorts.normalised, tmp_path / "ok.csv", slide_id=slide)
    with pytest.raises(DataError) as err:
        predict_slide(ckpt, cohorts.plain, tmp_path / "p.csv", slide_id=slide)
    assert MACENKO.id in str(err.value) and "stain normalisation none" in str(err.value)
    with pytest.raises(DataError, match=MACENKO.id):
        evaluate_run(run, cohorts.root / "cohort.csv", cohorts.plain, tmp_path / "ext", device="cpu")
    metrics = evaluate_run(run, cohorts.root / "cohort.csv", cohorts.normalised, tmp_path / "ext2", device="cpu")
    assert "abmil" in metrics["ensemble"]


def test_predicting_features_of_another_preprocessing_version_warns(cohorts, tmp_path, caplog):
    from histokd_core.workflows import predict_slide

    info = DataInfo(task="classification", feat_dim=8, n_classes=2, preprocessing=PREPROCESSING_VERSION)
    ckpt = _checkpoint(tmp_path, info)
    slide = pd.read_csv(cohorts.root / "cohort.csv")["slide_id"].iloc[0]
    with caplog.at_level("WARNING"):
        predict_slide(ckpt, cohorts.plain, tmp_path / "p.csv", slide_id=slide)  # stored before: version 1
    assert any("preprocessing version 1" in r.message and f"version {PREPROCESSING_VERSION}" in r.message
               for r in caplog.records)


def test_training_refuses_slides_of_mixed_settings(cohorts, tmp_path):
    from histokd_core.dataset import CohortData

    mixed = tmp_path / "mixed"
    shutil.copytree(cohorts.normalised, mixed)
    _retag(sorted(mixed.glob("*.zarr"))[0], stain=None, stain_reference=None)  # as extracted plain
    with pytest.raises(DataError, match="different stain normalisations") as err:
        CohortData(cohorts.root / "cohort.csv", mixed)
    assert MACENKO.id in str(err.value) and "stain none" in str(err.value)
