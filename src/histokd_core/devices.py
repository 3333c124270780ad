"""Torch devices: the one resolver every entry point uses (training, inference, patch encoders)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from histokd_core.errors import ConfigError

if TYPE_CHECKING:
    import torch


def _mps_available() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(spec: str | torch.device = "auto", *, auto_mps: bool = False) -> torch.device:
    """The torch device named by ``spec``, checked to be available.

    Parameters
    ----------
    spec : ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:<i>"`` or ``"mps"`` (or a ``torch.device``).
    auto_mps : whether ``"auto"`` may pick Apple's MPS after CUDA. Patch encoders allow it;
        training and model inference do not, because the survival losses and metrics compute in
        float64, which MPS lacks. ``"mps"`` asked for explicitly is always honoured.

    Returns
    -------
    ``"auto"``: CUDA when available, else MPS when ``auto_mps`` and available, else CPU.

    Raises
    ------
    ConfigError
        An unknown device name, or CUDA / MPS asked for but not available.
    """
    import torch

    text = str(spec).strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if auto_mps and _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind, _, index = text.partition(":")
    if kind not in ("cpu", "cuda", "mps") or (index and not (kind == "cuda" and index.isdigit())):
        raise ConfigError(f"unknown device {spec!r}; expected auto, cpu, cuda[:i] or mps")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {spec!r} requested but CUDA is not available (use auto or cpu)")
    if kind == "mps" and not _mps_available():
        raise ConfigError(f"device {spec!r} requested but MPS is not available (use auto or cpu)")
    return torch.device(text)
