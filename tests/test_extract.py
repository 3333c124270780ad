"""extract_slide: features at the grid's coordinates, parallel tile loader, resume after a crash."""

from __future__ import annotations

import numpy as np
import pytest

from histokd_core.errors import DataError
from histokd_core.features import PatchEncoder, TileDataset, extract_slide, get_encoder, open_features
from histokd_core.features.extract import encode_tiles, partial_path
from histokd_core.slide import open_slide, patch_grid, tissue_mask
from histokd_core.synthetic import PlantedRegion, write_synthetic_slide


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("slides") / "synthetic_a.tif"
    regions = [PlantedRegion("tumor", 0, 0, 512, 512, 1.0), PlantedRegion("immune", 256, 512, 768, 1024, 1.0)]
    write_synthetic_slide(path, size_hw=(768, 1024), mpp=0.5, regions=regions, seed=3, workers=1)
    return path


class CountingEncoder(PatchEncoder):
    """Wraps an encoder and counts the patches it encodes (to see what a resumed run recomputes)."""

    def __init__(self, inner: PatchEncoder) -> None:
        self.inner = inner
        self.id, self.dim, self.input_size = inner.id, inner.dim, inner.input_size
        self.weights_hash, self.device = inner.weights_hash, inner.device
        self.count = 0

    def encode(self, batch: np.ndarray) -> np.ndarray:
        self.count += len(batch)
        return self.inner.encode(batch)


class Crash(RuntimeError):
    pass


def test_extract_slide_matches_grid_and_direct_encoding(slide_path, tmp_path):
    enc = get_encoder("hed-texture")
    result = extract_slide(slide_path, tmp_path, enc, num_workers=0, batch_size=4)
    assert result.status == "done" and result.slide_id == "synthetic_a"
    sf = open_features(tmp_path, "synthetic_a.tif")
    assert sf.magnifications == ("20x", "10x") and sf.attrs["complete"] is True
    assert sf.attrs["encoder_id"] == "hed-texture-v1" and sf.attrs["mpp"] == 0.5
    assert sf.attrs["slide_dimensions"] == [1024, 768]
    with open_slide(slide_path) as slide:
        mask = tissue_mask(slide)
        g20 = patch_grid(slide, 0.5, 256, 0.5, mask=mask)
        g10 = patch_grid(slide, 1.0, 256, 0.5, mask=mask)
        np.testing.assert_array_equal(sf.coords("20x"), g20.coords)
        np.testing.assert_array_equal(sf.coords("10x"), g10.coords)
        assert sf.patch_size_level0("10x") == 512 == g10.patch_size_level0
        # independent path: read one 20x patch ourselves and encode it
        x, y = g20.coords[-1]
        patch = slide.read_region((int(x), int(y)), 0, (256, 256))
    np.testing.assert_allclose(sf.feats("20x")[-1], enc.encode(patch[None])[0], rtol=1e-6)
    assert result.n_patches == {"20x": len(g20), "10x": len(g10)}
    assert result.stats.n_patches == len(g20) + len(g10) and result.stats.encode_s > 0


def test_parallel_loader_gives_the_same_tiles(slide_path):
    with open_slide(slide_path) as slide:
        grid = patch_grid(slide, 1.0, 128, 0.0)  # 10x from level 1: tiles read at another level
    dataset = TileDataset(slide_path, grid.coords, grid.patch_size_level0, grid.read_level, 128)
    tile, seconds, stats = dataset[3]
    assert tile.shape == (128, 128, 3) and seconds >= 0 and stats.shape == (4,)
    enc = get_encoder("hed-texture")
    serial, _ = encode_tiles(dataset, enc, batch_size=5, num_workers=0)
    parallel, stats = encode_tiles(dataset, enc, batch_size=5, num_workers=2)
    np.testing.assert_array_equal(serial, parallel)
    assert stats.n_patches == len(grid) and stats.read_s > 0


def test_resume_after_a_crash_mid_slide(slide_path, tmp_path):
    enc = CountingEncoder(get_encoder("hed-texture"))
    with open_slide(slide_path) as slide:
        mask = tissue_mask(slide)
        n20 = len(patch_grid(slide, 0.5, 256, 0.5, mask=mask))
        n10 = len(patch_grid(slide, 1.0, 256, 0.5, mask=mask))

    def crash_during_10x(done: int, total: int) -> None:
        assert total == n20 + n10
        if done > n20:
            raise Crash("power cut")

    with pytest.raises(Crash):
        extract_slide(slide_path, tmp_path, enc, num_workers=0, batch_size=1, progress=crash_during_10x)
    group = tmp_path / "synthetic_a.zarr"
    assert (group / "20x").is_dir() and not (group / "10x").exists()
    assert not [p for p in group.iterdir() if p.name.startswith(".10x")]  # no half-written 10x
    partial = open_features(tmp_path, "synthetic_a")
    assert partial.magnifications == ("20x",) and partial.attrs["complete"] is False
    first_20x = partial.feats("20x")

    # the one 10x patch encoded before the crash was kept (and is not encoded again)
    assert partial_path(tmp_path, "synthetic_a", "10x").is_file()
    enc.count = 0
    result = extract_slide(slide_path, tmp_path, enc, num_workers=0)
    assert result.status == "resumed" and result.n_resumed == {"10x": 1}
    assert enc.count == n10 - 1 and result.n_patches == {"10x": n10}
    assert not partial_path(tmp_path, "synthetic_a", "10x").exists()
    done = open_features(tmp_path, "synthetic_a")
    assert done.magnifications == ("20x", "10x") and done.attrs["complete"] is True
    np.testing.assert_array_equal(done.feats("20x"), first_20x)

    enc.count = 0
    assert extract_slide(slide_path, tmp_path, enc, num_workers=0).status == "skipped"
    assert enc.count == 0


class SlowEncoder(CountingEncoder):
    """Takes ``seconds`` per patch (a slow CPU encoder), so cancellation latency can be measured."""

    def __init__(self, inner: PatchEncoder, seconds: float) -> None:
        super().__init__(inner)
        self.seconds = seconds

    def encode(self, batch: np.ndarray) -> np.ndarray:
        import time

        time.sleep(self.seconds * len(batch))
        return super().encode(batch)


def test_cancel_within_a_second_keeps_features_and_resumes(slide_path, tmp_path):
    """A 64-patch batch at 0.2 s/patch would take 12.8 s; the encoder loop works in ~0.25 s sub-batches,
    so a cancel is seen well within a second, the patches done are kept, and the next run encodes
    only the rest; the result equals an uninterrupted extraction."""
    import threading
    import time

    from histokd_core.cancel import CancelToken
    from histokd_core.errors import Cancelled

    enc = SlowEncoder(get_encoder("hed-texture"), seconds=0.2)
    token = CancelToken()
    reports: list[tuple[float, int]] = []
    cancelled_at: list[float] = []

    def progress(done: int, total: int) -> None:
        reports.append((time.perf_counter(), done))
        if done >= 3 and not cancelled_at:
            def later():
                time.sleep(0.1)
                cancelled_at.append(time.perf_counter())
                token.cancel()
            threading.Thread(target=later).start()

    with pytest.raises(Cancelled):
        extract_slide(slide_path, tmp_path, enc, magnifications=("20x",), num_workers=0, batch_size=64,
                      progress=progress, cancel=token)
    latency = time.perf_counter() - cancelled_at[0]
    assert latency < 1.0, f"cancel took {latency:.2f} s"
    # progress came every few patches, not once per 64-patch batch
    counts = [d for _, d in reports]
    assert counts[0] == 1 and max(np.diff(counts)) <= 2
    kept = counts[-1]
    assert partial_path(tmp_path, "synthetic_a", "20x").is_file()
    with np.load(partial_path(tmp_path, "synthetic_a", "20x"), allow_pickle=False) as z:
        assert z["feats"].shape == (kept, enc.dim)

    fast = CountingEncoder(get_encoder("hed-texture"))
    result = extract_slide(slide_path, tmp_path, fast, magnifications=("20x",), num_workers=0)
    with open_slide(slide_path) as slide:
        n20 = len(patch_grid(slide, 0.5, 256, 0.5, mask=tissue_mask(slide)))
    assert result.status == "resumed" and result.n_resumed == {"20x": kept}
    assert fast.count == n20 - kept
    resumed = open_features(tmp_path, "synthetic_a").feats("20x")
    extract_slide(slide_path, tmp_path / "fresh", get_encoder("hed-texture"), magnifications=("20x",),
                  num_workers=0)
    np.testing.assert_allclose(resumed, open_features(tmp_path / "fresh", "synthetic_a").feats("20x"), rtol=1e-6)


def test_kept_features_of_another_encoder_are_not_reused(slide_path, tmp_path):
    from histokd_core.features.extract import _grid_key, load_partial, save_partial

    path = tmp_path / "k.npz"
    save_partial(path, np.ones((3, 4), np.float32), "key-a")
    assert load_partial(path, "key-b", 4) is None
    assert load_partial(path, "key-a", 5) is None
    np.testing.assert_array_equal(load_partial(path, "key-a", 4), np.ones((3, 4)))
    c = np.zeros((2, 2), np.int64)
    assert _grid_key({"encoder_id": "a"}, c, 256, 0) != _grid_key({"encoder_id": "b"}, c, 256, 0)
    assert _grid_key({"encoder_id": "a"}, c, 256, 0) != _grid_key({"encoder_id": "a"}, c + 1, 256, 0)


def test_killed_process_leftovers_are_ignored_and_cleaned(slide_path, tmp_path):
    enc = get_encoder("hed-texture")
    extract_slide(slide_path, tmp_path, enc, magnifications=("20x",), num_workers=0)
    leftover = tmp_path / "synthetic_a.zarr" / ".10x.abc123.tmp"  # as a SIGKILL during a write leaves it
    leftover.mkdir()
    (leftover / "zarr.json").write_text("{")
    assert open_features(tmp_path, "synthetic_a").magnifications == ("20x",)
    result = extract_slide(slide_path, tmp_path, enc, num_workers=0)
    assert result.status == "resumed" and not leftover.exists()


def test_other_encoder_refused_unless_overwrite(slide_path, tmp_path):
    extract_slide(slide_path, tmp_path, "hed-texture", magnifications=("10x",), num_workers=0)
    with pytest.raises(DataError, match="hed-texture-v1"):
        extract_slide(slide_path, tmp_path, "hed-texture", magnifications=("10x",), patch_px=128, num_workers=0)
    result = extract_slide(
        slide_path, tmp_path, "hed-texture", magnifications=("10x",), patch_px=128, num_workers=0, overwrite=True
    )
    assert result.status == "done"
    assert open_features(tmp_path, "synthetic_a").attrs["patch_px"] == 128


@pytest.mark.slow
def test_default_encoder_on_a_real_slide(shared_data, tmp_path):
    slide = shared_data / "slides" / "CMU-1-Small-Region.svs"
    result = extract_slide(slide, tmp_path, "efficientnet-lite0", num_workers=1)
    sf = open_features(tmp_path, slide.name)
    assert result.status == "done" and sf.magnifications == ("20x", "10x")
    assert sf.feats("20x").shape == (result.n_patches["20x"], 1280) and result.n_patches["20x"] > 20
    assert np.isfinite(sf.feats("10x")).all() and sf.attrs["mpp"] == pytest.approx(0.499)
    assert sf.patch_size_level0("20x") == 257  # 256 px at 0.5 um/px from 0.499 um/px
