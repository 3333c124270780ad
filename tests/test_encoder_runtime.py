"""CPU runtimes for the patch encoder: the exported graph gives the torch module's features."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from skimage import data
from skimage.transform import resize

from histokd_core.errors import EncoderError
from histokd_core.features import get_encoder
from histokd_core.features.base import TorchPatchEncoder
from histokd_core.features.runtime import (
    ATOL,
    RTOL,
    ExportedPatchEncoder,
    available_runtimes,
    export_onnx,
    with_runtime,
)

RUNTIMES = available_runtimes()


def _patches() -> np.ndarray:
    """Natural images, tissue-like texture and noise at 256 px (resized to 224 by the encoder)."""
    rng = np.random.default_rng(0)
    images = [data.chelsea(), data.coffee(), data.immunohistochemistry(), data.astronaut()]
    out = [np.rint(resize(im, (256, 256, 3), preserve_range=True)).astype(np.uint8) for im in images]
    out.append(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8))
    return np.stack(out)


@pytest.fixture(scope="module")
def lite0_torch():
    return get_encoder("efficientnet-lite0", device="cpu", backend="torch")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("encoder-cache")


@pytest.fixture(scope="module")
def reference(lite0_torch):
    batch = _patches()
    return batch, lite0_torch.encode(batch)


@pytest.mark.skipif(not RUNTIMES, reason="neither openvino nor onnxruntime is installed")
@pytest.mark.parametrize("backend", RUNTIMES)
def test_exported_encoder_equals_torch_within_tolerance(backend, lite0_torch, reference, cache):
    batch, expected = reference
    enc = with_runtime(lite0_torch, backend, cache_dir=cache)
    assert isinstance(enc, ExportedPatchEncoder) and enc.backend == backend
    assert (enc.id, enc.dim, enc.input_size) == (lite0_torch.id, 1280, 224)
    enc.batch_size = 2  # several runtime calls, one of them a partial batch
    got = enc.encode(batch)
    assert got.shape == expected.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=RTOL)
    # the comparison is not vacuous: the features differ between patches by far more
    assert np.abs(expected[0] - expected[1]).max() > 100 * ATOL


@pytest.mark.skipif(not RUNTIMES, reason="neither openvino nor onnxruntime is installed")
def test_auto_uses_the_preferred_installed_runtime_on_cpu_only_for_exportable_encoders(lite0_torch, cache):
    auto = with_runtime(lite0_torch, "auto", cache_dir=cache)
    assert isinstance(auto, ExportedPatchEncoder) and auto.backend == RUNTIMES[0]
    assert with_runtime(lite0_torch, "torch") is lite0_torch
    plain = TorchPatchEncoder(torch.nn.Flatten(), id="plain", dim=3 * 4 * 4, input_size=4, device="cpu")
    assert with_runtime(plain, "auto", cache_dir=cache) is plain  # not export_by_default


@pytest.mark.skipif(not RUNTIMES, reason="neither openvino nor onnxruntime is installed")
def test_export_is_cached_and_a_damaged_cache_file_is_exported_again(lite0_torch, reference, tmp_path):
    path = export_onnx(lite0_torch, tmp_path)
    assert path.parent == tmp_path / "encoders" and path.stat().st_size > 1_000_000
    stamp = path.stat().st_mtime_ns
    assert export_onnx(lite0_torch, tmp_path) == path and path.stat().st_mtime_ns == stamp
    assert not [p for p in path.parent.iterdir() if p.suffix == ".tmp"]  # no leftover temporaries
    path.write_bytes(b"not an onnx graph")
    enc = with_runtime(lite0_torch, RUNTIMES[0], cache_dir=tmp_path)
    batch, expected = reference
    np.testing.assert_allclose(enc.encode(batch[:2]), expected[:2], atol=ATOL, rtol=RTOL)
    assert path.stat().st_size > 1_000_000


@pytest.mark.skipif(not RUNTIMES, reason="neither openvino nor onnxruntime is installed")
@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_cache_falls_back_to_a_temporary_folder(lite0_torch, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        path = export_onnx(lite0_torch, locked)
        assert path.is_file() and locked not in path.parents
    finally:
        locked.chmod(0o700)


def test_bad_backend_names_raise_clear_errors(lite0_torch):
    with pytest.raises(EncoderError, match="unknown encoder backend 'tensorrt'"):
        with_runtime(lite0_torch, "tensorrt")
    missing = [b for b in ("openvino", "onnxruntime") if b not in RUNTIMES]
    for name in missing:
        with pytest.raises(EncoderError, match=f"{name}.*not installed"):
            with_runtime(lite0_torch, name)
