"""The patch-encoder interface every encoder implements, and torch inference for module encoders.

An encoder turns a batch of RGB patches ``(b, h, w, 3)`` uint8 into features ``(b, d)`` float32.
This module sits below the encoders (:mod:`.efficientnet`, :mod:`.hed`, :mod:`.foundation`), which
import only it; the spec registry (:mod:`histokd_core.features.encoders`) sits above them.
"""

from __future__ import annotations

import abc
import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from histokd_core.devices import resolve_device
from histokd_core.errors import EncoderError

if TYPE_CHECKING:
    import torch

#: ImageNet channel mean and std on a 0..1 scale (torchvision / timm convention).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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


def file_hash(path: str | os.PathLike, n_hex: int = 16) -> str:
    """First ``n_hex`` hex digits of the SHA-256 of a file (identifies weights in encoder ids)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:n_hex]


def require_file(path: str, what: str) -> Path:
    """``path`` as a Path, or EncoderError when it is empty or not an existing file."""
    if not path:
        raise EncoderError(f"{what}: no weights file given")
    p = Path(path).expanduser()
    if not p.is_file():
        raise EncoderError(f"{what}: weights file {p} does not exist")
    return p


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
    batch_size : patches per forward pass (a larger input batch is split); ``None`` on CUDA:
        chosen from the free GPU memory by :func:`cuda_batch_size` (64 elsewhere).
    autocast : mixed precision (float16) on CUDA; ignored on other devices.
    channels_last : NHWC memory layout for convolutional networks (about 1.5x faster on CPU
        for EfficientNet).
    export_by_default : whether ``backend="auto"`` runs this encoder through a CPU runtime
        (:mod:`histokd_core.features.runtime`) on CPU; set for the built-in EfficientNet-Lite0,
        whose export is measured to be faster and equal; other modules keep torch unless asked.
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
        batch_size: int | None = 64,
        weights_hash: str = "",
        autocast: bool = True,
        channels_last: bool = False,
        export_by_default: bool = False,
    ) -> None:
        import torch

        self.device = str(resolve_device(device, auto_mps=True))
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.module = module.eval().to(self.device, memory_format=self.memory_format)
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.id = id
        self.dim = int(dim)
        self.input_size = int(input_size)
        self.weights_hash = weights_hash
        self.autocast = bool(autocast) and self.device.startswith("cuda")
        self.export_by_default = bool(export_by_default)
        if batch_size is None:
            batch_size = cuda_batch_size(self) if self.device.startswith("cuda") else 64
        self.batch_size = int(batch_size)
        self._mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)

    def preprocess(self, batch: np.ndarray) -> torch.Tensor:
        """``(b, h, w, 3)`` uint8 -> ``(b, 3, s, s)`` float32 on the device, resized and normalised."""
        import torch
        import torch.nn.functional as F

        x = self.resize_uint8(batch) if self.device == "cpu" else torch.from_numpy(batch).permute(0, 3, 1, 2)
        if self.device.startswith("cuda"):
            x = x.pin_memory()
        x = x.to(self.device, non_blocking=True).float()
        size = (self.input_size, self.input_size)
        if x.shape[-2:] != size:
            x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        # (x / 255 - mean) / std in two in-place passes
        x = x.sub_(self._mean * 255.0).mul_(1.0 / (255.0 * self._std))
        return x.contiguous(memory_format=self.memory_format)

    def resize_uint8(self, batch: np.ndarray) -> torch.Tensor:
        """``(b, h, w, 3)`` uint8 -> ``(b, 3, s, s)`` uint8 (a channels-last view) on the CPU.

        torch's antialiased bilinear resize runs on uint8 channels-last tensors about 10x faster
        than in float32 and rounds to uint8, as PIL does.
        """
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(batch).permute(0, 3, 1, 2)  # a channels-last view, no copy
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", antialias=True, align_corners=False)
        return x

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


def cuda_batch_size(
    encoder: TorchPatchEncoder, fraction: float = 0.5, probe: int = 8, largest: int = 1024
) -> int:
    """Patches per forward pass that use about ``fraction`` of the free GPU memory.

    One forward of ``probe`` blank patches measures the peak memory per patch (activations,
    under autocast when enabled); the batch is ``fraction * free / per_patch``, rounded down to a
    multiple of 8 and clipped to ``[8, largest]``.
    """
    import torch

    device = torch.device(encoder.device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    x = torch.zeros(probe, 3, encoder.input_size, encoder.input_size, device=device)
    x = x.contiguous(memory_format=encoder.memory_format)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=encoder.autocast):
        encoder.module(x)
    per_patch = max(1, (torch.cuda.max_memory_allocated(device) - base) // probe)
    free, _ = torch.cuda.mem_get_info(device)
    size = int(fraction * free // per_patch) // 8 * 8
    return int(min(max(size, 8), largest))
