"""CPU inference runtimes for torch patch encoders: OpenVINO or ONNX Runtime on an exported graph.

Eager PyTorch runs EfficientNet-Lite0's depthwise convolutions at about a tenth of what two CPU
cores sustain on a dense model (``bench/bench_encoder.py``, ``docs/benchmarks.md``). On CPU the
same module is therefore exported to ONNX *at run time from the weights already loaded* (nothing
is downloaded) and run by OpenVINO or, when OpenVINO is not installed, ONNX Runtime. The export is
cached (``<cache>/encoders/<encoder id>-opset<k>.onnx``, atomic write) so later runs load it in
about a second; a cache file that cannot be read is exported again.

Features are those of the torch module within ``ATOL + RTOL * |torch|`` per element (float32 on
both sides; ``tests/test_encoder_runtime.py``); the encoder keeps its torch ``id``, so stores
written by either backend are interchangeable. The resize to the input size is the torch
encoder's own (uint8, :meth:`TorchPatchEncoder.resize_uint8`); the exported graph takes the
resized uint8 patches ``(b, s, s, 3)`` and does the float conversion and normalisation itself,
where the runtime fuses them into the first convolution (on two cores the separate torch
elementwise passes cost as much as a third of the encoding).

On CUDA (and MPS) torch stays the path (:class:`~histokd_core.features.base.TorchPatchEncoder`:
autocast, channels-last, pinned host memory, batch size from free memory).
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

from histokd_core.errors import EncoderError
from histokd_core.features.base import PatchEncoder, TorchPatchEncoder, check_batch

log = logging.getLogger(__name__)

#: Backends in the order ``"auto"`` prefers them on CPU (fastest first, see docs/benchmarks.md).
CPU_RUNTIMES = ("openvino", "onnxruntime")
BACKENDS = ("auto", "torch", *CPU_RUNTIMES)
#: ONNX opset of the export.
OPSET = 17
#: Stated tolerance of an exported encoder against its torch module (per element, float32).
ATOL, RTOL = 1e-4, 1e-4


def available_runtimes() -> list[str]:
    """The CPU runtimes importable here, in preference order (a subset of :data:`CPU_RUNTIMES`)."""
    found = []
    for name in CPU_RUNTIMES:
        try:
            __import__(name)
        except ImportError:
            continue
        found.append(name)
    return found


def default_cache_dir() -> Path:
    """``$HISTOKD_CACHE``, else ``$XDG_CACHE_HOME/histokd``, else ``~/.cache/histokd``."""
    if os.environ.get("HISTOKD_CACHE"):
        return Path(os.environ["HISTOKD_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "histokd"


def _safe_name(encoder_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.@" else "_" for c in encoder_id)


def _preprocessed_module(encoder: TorchPatchEncoder):
    """``x (b, s, s, 3)`` uint8 -> ``encoder.module((x / 255 - mean) / std)`` in NCHW float32."""
    import torch

    class Preprocessed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.module = encoder.module
            self.register_buffer("offset", encoder._mean.cpu() * 255.0)
            self.register_buffer("scale", 1.0 / (255.0 * encoder._std.cpu()))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.module((x.permute(0, 3, 1, 2).float() - self.offset) * self.scale)

    return Preprocessed().eval()


def export_onnx(encoder: TorchPatchEncoder, cache_dir: str | os.PathLike | None = None) -> Path:
    """The ONNX graph of ``encoder.module`` with its normalisation: input ``x (b, s, s, 3)`` uint8
    (already resized), output ``(b, d)`` float32.

    Exported once per encoder id into ``<cache_dir>/encoders/`` (written to a temporary file and
    renamed, so a crash never leaves a half-written graph); an existing file is reused. When the
    cache directory cannot be written the graph goes to a fresh temporary directory.
    """
    import torch

    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = root / "encoders" / f"{_safe_name(encoder.id)}-uint8-opset{OPSET}.onnx"
    if target.is_file() and target.stat().st_size > 0:
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(suffix=".onnx.tmp", dir=target.parent)
    except OSError as exc:
        log.warning("cannot write the encoder cache %s (%s): exporting to a temporary folder", root, exc)
        target = Path(tempfile.mkdtemp(prefix="histokd-encoder-")) / target.name
        handle, tmp = tempfile.mkstemp(suffix=".onnx.tmp", dir=target.parent)
    os.close(handle)
    device = next(iter(encoder.module.parameters()), torch.empty(0)).device
    encoder.module.to("cpu", memory_format=torch.contiguous_format)
    module = _preprocessed_module(encoder)
    example = torch.zeros(2, encoder.input_size, encoder.input_size, 3, dtype=torch.uint8)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # fused transformer kernels have no ONNX form
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module, (example,), tmp, input_names=["x"], output_names=["features"],
                dynamic_axes={"x": {0: "batch"}, "features": {0: "batch"}},
                opset_version=OPSET, dynamo=False,
            )
        os.replace(tmp, target)
    except Exception as exc:  # noqa: BLE001 - the exporter raises many types
        Path(tmp).unlink(missing_ok=True)
        raise EncoderError(f"encoder {encoder.id}: ONNX export failed ({type(exc).__name__}: {exc})") from exc
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        encoder.module.to(device, memory_format=encoder.memory_format)
    log.info("exported %s to %s", encoder.id, target)
    return target


class OpenVINOGraph:
    """Compiled OpenVINO model on CPU. ``precision`` ``"f32"`` by default: the CPU plugin's own
    default on AVX512-BF16 machines is bfloat16, which moves features by ~2 % (measured in
    ``bench/bench_features.py``, not used by the encoders)."""

    def __init__(self, path: Path, threads: int, precision: str = "f32") -> None:
        import openvino as ov

        core = ov.Core()
        self.compiled = core.compile_model(
            core.read_model(str(path)), "CPU",
            {"INFERENCE_NUM_THREADS": int(threads), "INFERENCE_PRECISION_HINT": precision,
             "PERFORMANCE_HINT": "LATENCY"},
        )
        self.request = self.compiled.create_infer_request()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.array(self.request.infer({0: x})[0], dtype=np.float32, copy=True)


class OnnxRuntimeGraph:
    """ONNX Runtime session on the CPU execution provider, all graph optimisations."""

    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run(None, {"x": x})[0], dtype=np.float32)


_GRAPHS = {"openvino": OpenVINOGraph, "onnxruntime": OnnxRuntimeGraph}


class ExportedPatchEncoder(PatchEncoder):
    """A :class:`TorchPatchEncoder`'s module run by a CPU runtime on its exported ONNX graph.

    Same ``id``, ``dim``, ``input_size``, ``weights_hash`` and pre-processing as ``torch_encoder``;
    ``backend`` is ``"openvino"`` or ``"onnxruntime"``.
    """

    def __init__(
        self, torch_encoder: TorchPatchEncoder, backend: str,
        cache_dir: str | os.PathLike | None = None, threads: int | None = None,
    ) -> None:
        import torch

        if backend not in _GRAPHS:
            raise EncoderError(f"unknown encoder runtime {backend!r}; expected one of {', '.join(_GRAPHS)}")
        if torch_encoder.device != "cpu":
            raise EncoderError(f"encoder runtime {backend} runs on CPU, not {torch_encoder.device}")
        self.torch_encoder = torch_encoder
        self.id, self.dim = torch_encoder.id, torch_encoder.dim
        self.input_size, self.weights_hash = torch_encoder.input_size, torch_encoder.weights_hash
        self.batch_size = torch_encoder.batch_size
        self.device, self.backend = "cpu", backend
        self.threads = int(threads or torch.get_num_threads())
        path = export_onnx(torch_encoder, cache_dir)
        try:
            self.graph = _GRAPHS[backend](path, self.threads)
        except Exception as exc:  # noqa: BLE001 - a damaged cache file: export again once
            log.warning("%s cannot load %s (%s): exporting again", backend, path, exc)
            path.unlink(missing_ok=True)
            path = export_onnx(torch_encoder, cache_dir)
            self.graph = _GRAPHS[backend](path, self.threads)
        self.path = path

    def encode(self, batch: np.ndarray) -> np.ndarray:
        import torch

        batch = check_batch(batch)
        out = np.empty((len(batch), self.dim), dtype=np.float32)
        for start in range(0, len(batch), self.batch_size):
            with torch.inference_mode():
                x = self.torch_encoder.resize_uint8(batch[start : start + self.batch_size])
                x = x.permute(0, 2, 3, 1).contiguous().numpy()  # (b, s, s, 3), no copy when resized
            y = self.graph(x)
            if y.ndim != 2 or y.shape[1] != self.dim:
                raise EncoderError(f"encoder {self.id} ({self.backend}) returned shape {y.shape}; expected (b, {self.dim})")
            out[start : start + len(x)] = y
        return out

    def __repr__(self) -> str:
        return f"ExportedPatchEncoder(id={self.id!r}, dim={self.dim}, backend={self.backend!r})"


def with_runtime(
    encoder: PatchEncoder, backend: str = "auto", cache_dir: str | os.PathLike | None = None,
    threads: int | None = None,
) -> PatchEncoder:
    """``encoder`` run by ``backend``.

    Parameters
    ----------
    encoder : any encoder; only a :class:`TorchPatchEncoder` on CPU can change runtime.
    backend : ``"torch"`` (unchanged), ``"openvino"``, ``"onnxruntime"`` or ``"auto"``: on CPU, for
        an encoder with ``export_by_default`` (the built-in EfficientNet-Lite0), the first of
        :data:`CPU_RUNTIMES` that is installed (both beat eager torch on it, OpenVINO the most);
        otherwise torch (always on CUDA/MPS).
    cache_dir : where exported graphs are kept (default :func:`default_cache_dir`).
    threads : runtime threads (default ``torch.get_num_threads()``).

    Raises
    ------
    EncoderError
        An unknown backend, a runtime asked for by name but not installed, or a failed export.
    """
    if backend not in BACKENDS:
        raise EncoderError(f"unknown encoder backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if backend == "torch" or not isinstance(encoder, TorchPatchEncoder):
        return encoder
    if encoder.device != "cpu":
        if backend != "auto":
            raise EncoderError(f"encoder backend {backend} runs on CPU; the encoder is on {encoder.device}")
        return encoder
    installed = available_runtimes()
    if backend == "auto":
        if not installed or not encoder.export_by_default:
            return encoder
        backend = installed[0]
    elif backend not in installed:
        raise EncoderError(f"encoder backend {backend!r} is not installed (pip install {backend})")
    return ExportedPatchEncoder(encoder, backend, cache_dir, threads)
