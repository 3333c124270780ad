"""Patch encoders: the shipped ImageNet EfficientNet-Lite0, the HED descriptor, the registry."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from skimage import data
from skimage.transform import resize

from histokd_core.devices import resolve_device
from histokd_core.errors import ConfigError, EncoderError
from histokd_core.features import efficientnet, get_encoder, hed, spec_from_id
from histokd_core.features.base import TorchPatchEncoder, file_hash

#: SHA-256 of efficientnet-lite0-57934424.pth as published (torch-hub names carry its first 8 digits).
LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
IMAGENET_CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
IMAGENET_COFFEE = {504, 967, 968}  # coffee mug, espresso, cup


def _patch(image: np.ndarray, size: int = 224) -> np.ndarray:
    return np.rint(resize(image, (size, size, 3), anti_aliasing=True, preserve_range=True)).astype(np.uint8)


@pytest.fixture(scope="module")
def lite0():
    return get_encoder("efficientnet-lite0", device="cpu")


def test_efficientnet_weights_are_the_shipped_imagenet_ones(lite0):
    assert file_hash(efficientnet.weights_path(), 64) == LITE0_SHA256
    assert lite0.dim == 1280 and lite0.input_size == 224
    assert lite0.weights_hash == LITE0_SHA256[:16] and LITE0_SHA256[:16] in lite0.id
    # the 1280-d features, fed to the shipped ImageNet classifier, recognise natural images
    classifier = efficientnet.build_model()
    images = np.stack([_patch(data.chelsea()), _patch(data.coffee())])
    feats = lite0.encode(images)
    assert feats.shape == (2, 1280) and feats.dtype == np.float32
    logits = classifier._fc(torch.from_numpy(feats)).argmax(1).tolist()
    assert logits[0] in IMAGENET_CATS
    assert logits[1] in IMAGENET_COFFEE


def test_efficientnet_features_distinguish_textures_and_are_deterministic(lite0):
    brick = np.repeat(data.brick()[..., None], 3, axis=2)
    grass = np.repeat(data.grass()[..., None], 3, axis=2)
    batch = np.stack([_patch(brick, 256), _patch(grass, 256), _patch(brick, 256)])
    feats = lite0.encode(batch)
    assert np.all(np.isfinite(feats)) and feats.min() >= 0  # pooled ReLU6 activations
    cosine = feats[0] @ feats[1] / np.linalg.norm(feats[0]) / np.linalg.norm(feats[1])
    assert cosine < 0.9
    np.testing.assert_allclose(feats[0], feats[2], rtol=1e-5, atol=1e-5)


def _ruifrok_hed(rgb: tuple[int, int, int]) -> np.ndarray:
    """Colour deconvolution written out independently (Ruifrok & Johnston 2001 H&E-DAB vectors)."""
    rgb_from_hed = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
    od = np.log(np.maximum(np.asarray(rgb) / 255.0, 1e-6)) / np.log(1e-6)
    return np.maximum(od @ np.linalg.inv(rgb_from_hed), 0)


def test_hed_descriptor_against_hand_computed_values():
    pink, purple = (230, 150, 200), (80, 50, 130)
    patch = np.empty((256, 256, 3), np.uint8)
    patch[:] = pink
    corners = [(20, 20), (20, 120), (100, 60), (180, 200), (220, 30)]
    for y, x in corners:  # five 6x6 "nuclei"
        patch[y : y + 6, x : x + 6] = purple
    patch[60:62, 200:202] = purple  # a 4 px speck: below MIN_NUCLEUS_PX, not a nucleus
    f = dict(zip(hed.FEATURE_NAMES, get_encoder("hed-texture").encode(patch)[0]))
    assert len(hed.FEATURE_NAMES) == 35
    n = 256 * 256
    n_purple = 5 * 36 + 4
    h_pink, h_purple = _ruifrok_hed(pink)[0], _ruifrok_hed(purple)[0]
    assert h_pink < hed.H_NUCLEUS < h_purple
    assert f["h_mean"] == pytest.approx((n_purple * h_purple + (n - n_purple) * h_pink) / n, rel=1e-4)
    assert f["e_mean"] == pytest.approx(
        (n_purple * _ruifrok_hed(purple)[1] + (n - n_purple) * _ruifrok_hed(pink)[1]) / n, rel=1e-4
    )
    assert f["h_p90"] == pytest.approx(h_pink, rel=1e-4)
    assert f["tissue_fraction"] == 1.0  # every pixel is darker than glass
    assert f["nuclear_fraction"] == pytest.approx(5 * 36 / n)
    assert f["nuclei_per_10k_px"] == pytest.approx(5 * 1e4 / n)
    assert f["nucleus_area_mean"] == pytest.approx(36.0)
    assert f["nucleus_area_std"] == pytest.approx(0.0)


def test_hed_texture_on_stripes_and_flat_patch():
    grey_a, grey_b = 40, 200  # grey levels 40 // 8 = 5 and 200 // 8 = 25 after quantisation
    stripes = np.empty((256, 256, 3), np.uint8)
    stripes[:, 0::2] = grey_a
    stripes[:, 1::2] = grey_b
    flat = np.empty((256, 256, 3), np.uint8)
    flat[:] = (230, 150, 200)  # flat eosin pink
    feats = get_encoder("hed-texture").encode(np.stack([stripes, flat]))
    s, c = (dict(zip(hed.FEATURE_NAMES, row)) for row in feats)
    # alternating columns: a pair differs when its column offset is odd. skimage's offsets are
    # (round(d sin a), round(d cos a)): d=1 -> columns 1, 1, 0, 1 (3 of 4 angles differ);
    # d=3 -> columns 3, 2, 0, 2 (1 of 4 angles differs)
    for d, share in ((1, 0.75), (3, 0.25)):
        assert s[f"glcm_contrast_d{d}"] == pytest.approx(share * (25 - 5) ** 2, rel=1e-6)
        assert s[f"glcm_dissimilarity_d{d}"] == pytest.approx(share * 20, rel=1e-6)
        assert s[f"glcm_ASM_d{d}"] == pytest.approx(0.5)  # two equally likely symmetric pairs
        assert c[f"glcm_contrast_d{d}"] == 0.0
        assert c[f"glcm_energy_d{d}"] == pytest.approx(1.0)
    # a flat patch: every interior pixel has 8 brighter-or-equal neighbours -> uniform LBP code 8
    # (skimage reads neighbours outside the image as 0, so the 1 px border gets other codes)
    assert c["lbp_8"] == pytest.approx(254**2 / 256**2)
    assert sum(c[f"lbp_{i}"] for i in range(10)) == pytest.approx(1.0)
    assert c["nuclear_fraction"] == 0.0 and c["nucleus_area_mean"] == 0.0


def test_hed_resizes_other_patch_sizes():
    enc = get_encoder("hed-texture")
    small = np.full((2, 128, 128, 3), 128, np.uint8)
    assert enc.encode(small).shape == (2, enc.dim)
    with pytest.raises(EncoderError, match="uint8"):
        enc.encode(small.astype(np.float32))


def test_registry_errors_name_the_problem(tmp_path):
    with pytest.raises(EncoderError, match="unknown encoder 'resnet-foo'"):
        get_encoder("resnet-foo")
    with pytest.raises(EncoderError, match="timm:<arch>:<weights file>"):
        get_encoder("timm:uni")
    with pytest.raises(EncoderError, match="does not exist"):
        get_encoder(f"timm:uni:{tmp_path / 'missing.bin'}")
    with pytest.raises(EncoderError, match="does not exist"):
        get_encoder(f"torchscript:{tmp_path / 'missing.pt'}")
    bad = tmp_path / "junk.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(EncoderError, match="not a TorchScript file"):
        get_encoder(f"torchscript:{bad}")


def test_spec_from_id_rebuilds_the_builtin_encoders(lite0):
    """Stores and checkpoints keep the encoder id; the built-in encoders are rebuilt from it."""
    for enc in (lite0, get_encoder("hed-texture")):
        assert get_encoder(spec_from_id(enc.id), device="cpu").id == enc.id
    for encoder_id in ("timm-uni@0123abcd", "torchscript-model@0123abcd", "resnet50"):
        with pytest.raises(EncoderError, match="histokd extract --encoder"):
            spec_from_id(encoder_id)


@pytest.mark.skipif(importlib.util.find_spec("timm") is not None, reason="timm is installed")
def test_timm_missing_gives_a_clear_error(tmp_path):
    weights = tmp_path / "pytorch_model.bin"
    torch.save({"w": torch.zeros(1)}, weights)
    with pytest.raises(EncoderError, match="need the 'timm' package"):
        get_encoder(f"timm:uni:{weights}")


def test_backbone_weights_loading_rules(tmp_path):
    from safetensors.torch import save_file

    from histokd_core.features.foundation import load_backbone_weights

    torch.manual_seed(0)
    source = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    state["head.weight"] = torch.zeros(10, 2)  # an ImageNet/linear-probe head is ignored
    torch.save({"state_dict": state}, tmp_path / "ckpt.pth")
    target = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    load_backbone_weights(target, tmp_path / "ckpt.pth", "test net")
    for a, b in zip(source.parameters(), target.parameters()):
        assert torch.equal(a, b)
    save_file({k: v.contiguous() for k, v in source.state_dict().items() if k != "1.bias"}, tmp_path / "w.safetensors")
    with pytest.raises(EncoderError, match=r"do not match test net \(missing \['1.bias'\]"):
        load_backbone_weights(target, tmp_path / "w.safetensors", "test net")
    torch.save({"0.weight": torch.zeros(5, 4)}, tmp_path / "shape.pth")
    with pytest.raises(EncoderError, match="do not fit test net"):
        load_backbone_weights(target, tmp_path / "shape.pth", "test net")


def test_torchscript_encoder_matches_the_module(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
    ).eval()
    path = tmp_path / "tiny.pt"
    torch.jit.save(torch.jit.script(net), str(path), _extra_files={"histokd.json": '{"input_size": 64}'})
    enc = get_encoder(f"torchscript:{path}", device="cpu")
    assert (enc.dim, enc.input_size) == (8, 64)
    patches = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    x = torch.from_numpy(patches).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = net(x).numpy()
    np.testing.assert_allclose(enc.encode(patches), expected, rtol=1e-5, atol=1e-5)


def test_torch_encoder_batches_and_checks_output_shape():
    module = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    enc = TorchPatchEncoder(module, id="mean-rgb", dim=3, input_size=16, mean=(0, 0, 0), std=(1, 1, 1), batch_size=2)
    patches = np.zeros((5, 32, 32, 3), np.uint8)
    patches[:, :, :, 0] = np.arange(5)[:, None, None] * 50
    np.testing.assert_allclose(enc.encode(patches)[:, 0], np.arange(5) * 50 / 255, atol=1e-6)
    wrong = TorchPatchEncoder(module, id="wrong", dim=4, input_size=16)
    with pytest.raises(EncoderError, match=r"expected \(b, 4\)"):
        wrong.encode(patches)


def test_device_selection():
    assert resolve_device("auto", auto_mps=True).type in ("cuda", "mps", "cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")
    for bad in ("tpu", "not-a-device", "cpu:1", "cuda:x"):
        with pytest.raises(ConfigError, match="unknown device"):
            resolve_device(bad)
