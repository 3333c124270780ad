"""Checkpoints: safetensors weights + JSON metadata, written atomically, verified on load.

A checkpoint ``NAME.safetensors`` holds the model's tensors and, in its safetensors metadata, a JSON
document (``meta``) with the method, its full config, the stage, the :class:`DataInfo`, the feature
encoder id, the package version, the epoch and a SHA-256 digest of the tensors; ``NAME.json``
beside it repeats ``meta`` for people. Nothing is unpickled: loading is safe on untrusted files.
Resumable training state (optimizer moments, best weights) uses the same format.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from torch import nn

from histokd_core import __version__
from histokd_core.bag import DataInfo
from histokd_core.errors import CheckpointError, ConfigError
from histokd_core.io import atomic_write_bytes, atomic_write_text, to_jsonable
from histokd_core.methods.base import BagModel
from histokd_core.methods.registry import method_stages

FORMAT = "histokd-checkpoint"
FORMAT_VERSION = 1
_META_KEY = "histokd"


def frozen_prefixes(model: nn.Module) -> list[str]:
    """Names of submodules that are other, frozen BagModels (e.g. a teacher held by a student)."""
    out = []
    for name, module in model.named_modules():
        if not name or not isinstance(module, BagModel):
            continue
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            out.append(name + ".")
    return out


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's own state dict (CPU copies), without frozen BagModel submodules: a student's
    checkpoint does not carry its teacher, which inference does not need."""
    skip = tuple(frozen_prefixes(model))
    return {
        k: v.detach().cpu().clone().contiguous()
        for k, v in model.state_dict().items()
        if not (skip and k.startswith(skip))
    }


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` (from :func:`model_state`) strictly, after the model's
    :meth:`~histokd_core.methods.base.BagModel.match_state` saw its names; a mismatch raises
    CheckpointError."""
    if isinstance(model, BagModel):
        model.match_state(set(state))
    skip = tuple(frozen_prefixes(model))
    expected = {k for k in model.state_dict() if not (skip and k.startswith(skip))}
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: weights do not match the model (missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}); was it written for another method, stage or data?"
        )
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise CheckpointError(f"{source}: weights do not fit the model: {exc}") from None


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of ``tensors`` (sorted by name)."""
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_checkpoint(path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    """Write ``tensors`` + ``meta`` atomically to ``path`` (``.safetensors``) and ``path.json``."""
    from safetensors.torch import save

    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = to_jsonable(
        {
            **meta,
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "package_version": __version__,
            "digest": tensor_digest(tensors),
        }
    )
    text = json.dumps(meta, indent=1, sort_keys=True)
    atomic_write_text(path.with_suffix(".json"), text + "\n")
    atomic_write_bytes(path, save(tensors, metadata={_META_KEY: text}))
    return path


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and meta of a checkpoint, verified (format, version, digest).

    Raises
    ------
    CheckpointError : missing, not a safetensors file, not a histokd checkpoint, written by a newer
        format, or tensors that do not match their digest (truncated or modified).
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        tensors: dict[str, torch.Tensor] = {}
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            for key in f.keys():  # noqa: SIM118 - safe_open is not a dict
                tensors[key] = f.get_tensor(key)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({exc})") from None
    try:
        meta = json.loads(header[_META_KEY])
    except (KeyError, ValueError):
        raise CheckpointError(f"{path}: safetensors file without histokd metadata") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a histokd checkpoint (format {meta.get('format')!r})")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {meta['format_version']} is newer than this histokd "
            f"({__version__}) reads ({FORMAT_VERSION}); upgrade histokd"
        )
    if meta.get("digest") != tensor_digest(tensors):
        raise CheckpointError(
            f"{path}: tensors do not match their digest (file modified or damaged)"
        )
    return tensors, meta


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state dict into tensors (``"<param>.<key>"``) and JSON-able rest."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    rest: dict[str, dict] = {}
    for pid, state in sd["state"].items():
        rest[str(pid)] = {}
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{pid}.{key}"] = value
            else:
                rest[str(pid)][key] = value
    return tensors, {"param_groups": sd["param_groups"], "state": rest}


def load_optimizer_tensors(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], rest: dict
) -> None:
    """Inverse of :func:`optimizer_tensors`."""
    state: dict[int, dict] = {int(pid): dict(values) for pid, values in rest["state"].items()}
    for name, value in tensors.items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": rest["param_groups"]})


def load_model(
    checkpoint: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[BagModel, dict]:
    """Rebuild a trained model from its checkpoint (through the method registry, ``trained={}``)
    and load its weights; returns ``(model in eval mode, meta)``."""
    tensors, meta = read_checkpoint(checkpoint)
    if meta.get("kind") != "model":
        raise CheckpointError(f"{checkpoint}: holds training state, not a trained model")
    try:
        stages = method_stages(meta["method"], meta.get("method_config"))
    except ConfigError as exc:
        raise CheckpointError(f"{checkpoint}: {exc}") from None
    stage = {s.name: s for s in stages}.get(meta["stage"])
    if stage is None:
        raise CheckpointError(
            f"{checkpoint}: method {meta['method']!r} has no stage {meta['stage']!r}"
        )
    info = DataInfo(**meta["data_info"])
    model = stage.build(info, {})
    load_model_state(model, tensors, str(checkpoint))
    model.to(device).eval()
    return model, meta
