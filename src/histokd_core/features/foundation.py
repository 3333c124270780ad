"""Foundation-model encoders from local weight files: timm architectures and TorchScript modules.

Nothing is downloaded: the user points at a weights file they already have (UNI and UNI2-h are
gated on Hugging Face; see ``docs/features.md``).

``timm:<arch>:<weights file>``
    ``arch`` is a timm model name (built with ``pretrained=False, num_classes=0`` so ``forward``
    returns pooled features) or a preset below. Weights: ``.safetensors`` or a torch pickle loaded
    with ``weights_only=True``; classifier-head keys are ignored, every other key must match.
    timm is imported lazily (it needs torchvision), with a clear error when missing.
``torchscript:<file>``
    A scripted/traced module mapping ``(b, 3, s, s)`` normalised float to ``(b, d)``. ``s``,
    mean and std default to 224 and ImageNet; a file saved with
    ``_extra_files={"histokd.json": '{"input_size": 256, "mean": [...], "std": [...]}'}``
    overrides them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from histokd_core.errors import EncoderError
from histokd_core.features.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TorchPatchEncoder,
    file_hash,
    require_file,
)


@dataclass(frozen=True)
class TimmPreset:
    """A named timm configuration (from the model card of a pathology foundation model)."""

    arch: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    dim: int = 0
    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


def _presets() -> dict[str, TimmPreset]:
    """UNI / UNI2-h exactly as on their Hugging Face model cards (MahmoodLab/UNI, MahmoodLab/UNI2-h)."""
    import timm
    import torch

    return {
        "uni": TimmPreset(
            arch="vit_large_patch16_224",
            kwargs=dict(img_size=224, patch_size=16, init_values=1e-5, num_classes=0, dynamic_img_size=True),
            dim=1024,
        ),
        "uni2-h": TimmPreset(
            arch="vit_giant_patch14_224",
            kwargs=dict(
                img_size=224,
                patch_size=14,
                depth=24,
                num_heads=24,
                init_values=1e-5,
                embed_dim=1536,
                mlp_ratio=2.66667 * 2,
                num_classes=0,
                no_embed_class=True,
                mlp_layer=timm.layers.SwiGLUPacked,
                act_layer=torch.nn.SiLU,
                reg_tokens=8,
                dynamic_img_size=True,
            ),
            dim=1536,
        ),
    }


PRESET_NAMES = ("uni", "uni2-h")


def _import_timm():
    try:
        import timm
    except ImportError as exc:
        raise EncoderError(
            "timm encoders need the 'timm' package (and torchvision); install them to match your "
            f"torch build, e.g. `pip install timm torchvision` ({exc})"
        ) from exc
    return timm


def load_state_dict(path: Path) -> dict[str, Any]:
    """Tensors of a ``.safetensors`` file or a ``weights_only`` torch checkpoint.

    A checkpoint holding ``{"state_dict": ...}`` or ``{"model": ...}`` is unwrapped and a
    ``module.`` prefix (DataParallel) is removed.
    """
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - corrupt files raise many types
        raise EncoderError(f"{path}: cannot read weights ({type(exc).__name__}: {exc})") from exc
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and set(state) == {key}:
            state = state[key]
    if not isinstance(state, dict):
        raise EncoderError(f"{path}: expected a state dict of tensors, got {type(state).__name__}")
    return {k.removeprefix("module."): v for k, v in state.items()}


_HEAD_PREFIXES = ("head.", "fc.", "classifier.", "head_dist.")


def load_backbone_weights(model, path: Path, what: str) -> None:
    """Load ``path`` into ``model``: classifier-head keys are dropped, every other key must match.

    Raises
    ------
    EncoderError
        A key is missing or unexpected, or a tensor has the wrong shape (the message names both).
    """
    state = {k: v for k, v in load_state_dict(path).items() if not k.startswith(_HEAD_PREFIXES)}
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise EncoderError(f"{path}: weights do not fit {what} ({exc})") from exc
    if result.missing_keys or result.unexpected_keys:
        raise EncoderError(
            f"{path}: weights do not match {what} "
            f"(missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]})"
        )


def make_timm_encoder(argument: str, device: str = "auto", batch_size: int = 32) -> TorchPatchEncoder:
    """``timm:<arch>:<weights file>`` (``argument`` is ``<arch>:<weights file>``)."""
    arch, _, weights = argument.partition(":")
    if not arch or not weights:
        raise EncoderError(
            f"timm encoder spec must be 'timm:<arch>:<weights file>', got 'timm:{argument}' "
            f"(arch: a timm model name or one of {', '.join(PRESET_NAMES)})"
        )
    path = require_file(weights, f"timm:{arch}")
    timm = _import_timm()
    presets = _presets()
    if arch in presets:
        preset = presets[arch]
    else:
        preset = TimmPreset(arch=arch, kwargs=dict(num_classes=0))
    try:
        model = timm.create_model(preset.arch, pretrained=False, **preset.kwargs)
    except Exception as exc:  # noqa: BLE001 - unknown names raise RuntimeError in timm
        raise EncoderError(f"timm cannot build architecture {preset.arch!r}: {exc}") from exc
    load_backbone_weights(model, path, f"timm architecture {preset.arch!r}")
    if arch not in presets:
        cfg = getattr(model, "pretrained_cfg", None) or {}
        input_size = int(cfg.get("input_size", (3, 224, 224))[-1])
        mean = tuple(cfg.get("mean", IMAGENET_MEAN))
        std = tuple(cfg.get("std", IMAGENET_STD))
        preset = TimmPreset(arch=arch, dim=int(model.num_features), input_size=input_size, mean=mean, std=std)
    digest = file_hash(path)
    return TorchPatchEncoder(
        model,
        id=f"timm-{arch}@{digest}",
        dim=preset.dim,
        input_size=preset.input_size,
        mean=preset.mean,
        std=preset.std,
        device=device,
        batch_size=batch_size,
        weights_hash=digest,
    )


def make_torchscript_encoder(argument: str, device: str = "auto", batch_size: int = 32) -> TorchPatchEncoder:
    """``torchscript:<file>``: dimension found by one forward pass on a blank patch."""
    import torch

    path = require_file(argument, "torchscript")
    extra = {"histokd.json": ""}
    try:
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as exc:  # noqa: BLE001
        raise EncoderError(f"{path}: not a TorchScript file ({type(exc).__name__}: {exc})") from exc
    try:
        config = json.loads(extra["histokd.json"] or "{}")
    except json.JSONDecodeError as exc:
        raise EncoderError(f"{path}: extra file histokd.json is not valid JSON ({exc})") from exc
    input_size = int(config.get("input_size", 224))
    mean = tuple(config.get("mean", IMAGENET_MEAN))
    std = tuple(config.get("std", IMAGENET_STD))
    with torch.inference_mode():
        probe = module.eval()(torch.zeros(1, 3, input_size, input_size))
    if probe.ndim != 2:
        raise EncoderError(
            f"{path}: the module returns shape {tuple(probe.shape)} for one patch; expected (1, d)"
        )
    digest = file_hash(path)
    return TorchPatchEncoder(
        module,
        id=f"torchscript-{path.stem}@{digest}",
        dim=int(probe.shape[1]),
        input_size=input_size,
        mean=mean,
        std=std,
        device=device,
        batch_size=batch_size,
        weights_hash=digest,
    )
