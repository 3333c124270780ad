"""CSV tables and PNG crops of top patches."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from histokd_core.errors import DataError, HistoKDError
from histokd_core.export import save_patch_crops, top_k, top_patches_table, write_top_patches_csv


def test_top_k_ignores_nan_and_orders():
    s = np.array([0.1, np.nan, 0.9, 0.5, 0.9])
    np.testing.assert_array_equal(top_k(s, 3), [2, 4, 3])
    np.testing.assert_array_equal(top_k(s, 2, highest=False), [0, 3])


def test_table_and_csv_refuses_overwrite(tmp_path):
    coords = np.array([[0, 0], [256, 0], [512, 256]])
    t = top_patches_table(
        coords, {"attention": np.array([0.2, 0.5, 0.3]), "risk": np.ones(3)}, "attention", k=2,
        clusters={"tumor": np.array([1, 0, -1])}, patch_size=256,
    )
    assert list(t.columns) == ["rank", "patch_index", "x", "y", "patch_size", "attention", "risk", "cluster_tumor"]
    assert t["patch_index"].tolist() == [1, 2] and t["x"].tolist() == [256, 512]
    assert t["cluster_tumor"].tolist() == [0, -1]
    path = write_top_patches_csv(tmp_path / "top.csv", t)
    pd.testing.assert_frame_equal(pd.read_csv(path), t, check_dtype=False)
    with pytest.raises(HistoKDError, match="refusing to overwrite"):
        write_top_patches_csv(path, t)
    write_top_patches_csv(path, t.head(1), overwrite=True)
    assert len(pd.read_csv(path)) == 1
    with pytest.raises(DataError, match="rank_by"):
        top_patches_table(coords, {"a": np.ones(3)}, "b")
    with pytest.raises(DataError, match="tumor"):
        top_patches_table(coords, {"a": np.ones(3)}, "a", clusters={"tumor": np.ones(2)})


def test_png_crops_from_a_real_slide(tmp_path):
    from histokd_core.slide import open_slide
    from histokd_core.synthetic.slides import PlantedRegion, write_synthetic_slide

    path = tmp_path / "s.tiff"
    write_synthetic_slide(path, size_hw=(1024, 1024), mpp=0.5,
                          regions=[PlantedRegion("tumor", 512, 512, 768, 768, 1.0)], seed=0)
    with open_slide(path) as slide:
        coords = np.array([[512, 512], [0, 0]])
        files = save_patch_crops(slide, coords, 256, [0, 1], tmp_path / "crops", level=1)
        assert [f.name for f in files] == ["patch_001_512_512.png", "patch_002_0_0.png"]
        img = np.asarray(Image.open(files[0]))
        assert img.shape == (128, 128, 3)  # level 1 = downsample 2
        expected = slide.read_region((512, 512), 1, (128, 128))
        np.testing.assert_array_equal(img, expected)
        with pytest.raises(HistoKDError, match="refusing to overwrite"):
            save_patch_crops(slide, coords, 256, [0], tmp_path / "crops", level=1)
        with pytest.raises(HistoKDError, match="level"):
            save_patch_crops(slide, coords, 256, [0], tmp_path / "c2", level=99)
