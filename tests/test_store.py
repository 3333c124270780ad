"""Feature store: zarr round trip, identity checks, CLAM/TRIDENT .h5 and .pt imports."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from histokd_core.errors import DataError
from histokd_core.features import (
    available_slide_ids,
    open_features,
    read_slide_attrs,
    slide_id_of,
    write_slide_features,
)

TCGA = "TCGA-CV-5971-01Z-00-DX1.1e8e4e28-6d0d-4d41-b3e1-1d5a3d1f2a11"
ATTRS = {"encoder_id": "enc@abc", "weights_hash": "abc", "patch_px": 256, "mpp": 0.25, "slide_path": "/x.svs"}


def _bag(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    coords = np.stack([np.arange(n) % 7 * 512, np.arange(n) // 7 * 512], axis=1).astype(np.int64)
    return rng.normal(size=(n, d)).astype(np.float32), coords


def test_slide_id_of_strips_slide_extensions_only():
    assert slide_id_of(f"/data/{TCGA}.svs") == TCGA
    assert slide_id_of(f"{TCGA}.h5") == TCGA
    assert slide_id_of("case.1.tiff") == "case.1"


def test_store_round_trip_two_magnifications(tmp_path):
    f20, c20 = _bag(30, 16, 0)
    f10, c10 = _bag(9, 16, 1)
    write_slide_features(tmp_path, f"{TCGA}.svs", "20x", f20, c20, {**ATTRS, "patch_size_level0": 512, "complete": False})
    assert read_slide_attrs(tmp_path, TCGA)["complete"] is False
    write_slide_features(tmp_path, TCGA, "10x", f10, c10, {**ATTRS, "patch_size_level0": 1024})
    assert (tmp_path / f"{TCGA}.zarr").is_dir()
    sf = open_features(tmp_path, f"{TCGA}.svs")
    assert sf.magnifications == ("20x", "10x")
    np.testing.assert_array_equal(sf.feats("20x"), f20)
    np.testing.assert_array_equal(sf.coords("20x"), c20)
    np.testing.assert_array_equal(sf.feats("10x"), f10)
    assert sf.feats().dtype == np.float32 and sf.coords().dtype == np.int64
    assert sf.attrs["encoder_id"] == "enc@abc" and sf.attrs["complete"] is True
    assert sf.attrs["patch_size_level0"] == 512 and sf.patch_size_level0("10x") == 1024
    assert sf.mag_attrs("10x")["target_mpp"] == 1.0 and sf.dim == 16
    with pytest.raises(DataError, match="no features at 5x"):
        sf.feats("5x")
    assert available_slide_ids(tmp_path) == [TCGA]
    assert not list((tmp_path / f"{TCGA}.zarr").glob(".*tmp"))


def test_store_refuses_other_encoder_and_bad_arrays(tmp_path):
    feats, coords = _bag(5, 4)
    write_slide_features(tmp_path, "s1", "20x", feats, coords, ATTRS)
    other = {**ATTRS, "encoder_id": "other@def", "weights_hash": "def"}
    with pytest.raises(DataError, match="remove it or pass overwrite=True"):
        write_slide_features(tmp_path, "s1", "10x", feats, coords, other)
    write_slide_features(tmp_path, "s1", "10x", feats[:2], coords[:2], other, overwrite=True)
    sf = open_features(tmp_path, "s1")
    assert sf.magnifications == ("10x",) and sf.attrs["encoder_id"] == "other@def"
    with pytest.raises(DataError, match=r"coords must be \(n_patches, 2\)"):
        write_slide_features(tmp_path, "s2", "20x", feats, coords[:3], ATTRS)
    with pytest.raises(DataError, match=r"feats must be \(n_patches, d\)"):
        write_slide_features(tmp_path, "s2", "20x", feats[0], coords, ATTRS)
    with pytest.raises(DataError, match="magnification 'twenty' not understood"):
        write_slide_features(tmp_path, "s2", "twenty", feats, coords, ATTRS)
    with pytest.raises(DataError, match=r"feature dimension 3 differs from the stored 4"):
        write_slide_features(tmp_path, "s1", "20x", feats[:, :3], coords, other)


def test_open_features_missing_slide_names_what_it_looked_for(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        open_features(tmp_path / "nope", "s1")
    with pytest.raises(DataError, match=r"no features for slide 'x.svs' .*x.zarr, x.h5, x.pt"):
        open_features(tmp_path, "x.svs")


def test_empty_slide_round_trips(tmp_path):
    write_slide_features(tmp_path, "blank", "20x", np.zeros((0, 8)), np.zeros((0, 2), np.int64), ATTRS)
    sf = open_features(tmp_path, "blank")
    assert sf.feats().shape == (0, 8) and sf.coords().shape == (0, 2)


def test_trident_h5_import_with_attrs(tmp_path):
    feats, coords = _bag(12, 1536)
    with h5py.File(tmp_path / f"{TCGA}.h5", "w") as fh:
        fh.create_dataset("features", data=feats)
        ds = fh.create_dataset("coords", data=coords)
        ds.attrs["patch_size_level0"] = 1792
        ds.attrs["patch_size"] = 896
        ds.attrs["target_magnification"] = 20
        ds.attrs["name"] = TCGA
    sf = open_features(tmp_path, f"{TCGA}.svs")
    assert sf.magnifications == ("20x",)
    np.testing.assert_array_equal(sf.feats(), feats)
    np.testing.assert_array_equal(sf.coords("20x"), coords)
    assert sf.patch_size_level0() == 1792 and sf.attrs["patch_size_inferred"] is False
    assert sf.attrs["source_attrs"]["name"] == TCGA
    assert available_slide_ids(tmp_path) == [TCGA]


def test_clam_h5_import_without_attrs_infers_patch_size(tmp_path):
    feats, coords = _bag(10, 1024)
    (tmp_path / "h5_files").mkdir()
    with h5py.File(tmp_path / "h5_files" / "slide_7.h5", "w") as fh:
        fh.create_dataset("features", data=feats[None])  # DML-style (1, n, d)
        fh.create_dataset("coords", data=coords)
    sf = open_features(tmp_path, "slide_7.ndpi")
    assert sf.feats().shape == (10, 1024)
    assert sf.patch_size_level0() == 512 and sf.attrs["patch_size_inferred"] is True


def test_inferred_patch_size_ignores_offsets_between_clam_contours(tmp_path):
    """CLAM tiles each tissue contour from its own corner: two 512-px lattices 3 px apart. The
    patch size is the step between neighbours (512), not the smallest coordinate difference (3)."""
    first = np.stack(np.meshgrid(np.arange(4) * 512, np.arange(3) * 512), -1).reshape(-1, 2)
    second = first + np.array([4 * 512 + 3, 3])
    coords = np.concatenate([first, second]).astype(np.int64)
    with h5py.File(tmp_path / "slide_8.h5", "w") as fh:
        fh.create_dataset("features", data=np.zeros((len(coords), 4), np.float32))
        fh.create_dataset("coords", data=coords)
    sf = open_features(tmp_path, "slide_8")
    assert sf.patch_size_level0() == 512 and sf.attrs["patch_size_inferred"] is True


def test_h5_import_errors(tmp_path):
    with h5py.File(tmp_path / "a.h5", "w") as fh:
        fh.create_dataset("Res_feature", data=np.zeros((3, 4)))
    with pytest.raises(DataError, match="a.h5: no 'features' dataset"):
        open_features(tmp_path, "a")
    with h5py.File(tmp_path / "b.h5", "w") as fh:
        fh.create_dataset("features", data=np.zeros((3, 4)))
        fh.create_dataset("coords", data=np.zeros((2, 2)))
    with pytest.raises(DataError, match="3 feature rows but 2 coords rows"):
        open_features(tmp_path, "b")
    (tmp_path / "c.h5").write_bytes(b"garbage")
    with pytest.raises(DataError, match="c.h5: cannot read as HDF5"):
        open_features(tmp_path, "c.svs")


def test_pt_bags_with_and_without_coords(tmp_path):
    feats, coords = _bag(6, 8)
    (tmp_path / "pt_files").mkdir()
    (tmp_path / "h5_files").mkdir()
    torch.save(torch.from_numpy(feats), tmp_path / "pt_files" / "s1.pt")
    with h5py.File(tmp_path / "h5_files" / "s1.h5", "w") as fh:  # CLAM writes both
        fh.create_dataset("features", data=feats)
        fh.create_dataset("coords", data=coords)
    sf = open_features(tmp_path / "pt_files", "s1.svs")
    np.testing.assert_array_equal(sf.feats(), feats)
    np.testing.assert_array_equal(sf.coords(), coords)

    torch.save({"features": torch.from_numpy(feats), "coords": torch.from_numpy(coords)}, tmp_path / "s2.pt")
    np.testing.assert_array_equal(open_features(tmp_path, "s2").coords(), coords)

    lone = tmp_path / "lone"
    lone.mkdir()
    torch.save(torch.from_numpy(feats), lone / "s3.pt")  # SurvPath/MCAT: features only
    sf = open_features(lone, "s3")
    assert sf.attrs["coords_missing"] is True and (sf.coords() == -1).all()
    assert sf.patch_size_level0() is None

    torch.save([1, 2], lone / "s4.pt")
    with pytest.raises(DataError, match="s4.pt: expected a tensor"):
        open_features(lone, "s4")
