"""Patch-encoder throughput on CPU by runtime, the loader's stages apart, and the compute limit.

Issue 16, point 1. Everything is measured in one run on the same cores, so the ratios hold even on
a loaded machine (absolute figures do not):

1. loader stages per patch, in this process: slide read + JPEG decode (``Slide.read_region``),
   resize to the patch size, and the encoder's own pre-processing (resize to 224 + normalise);
2. encode-only patches/s of the default EfficientNet-Lite0 on the same pre-read tiles: eager torch
   (channels-last, the reference), ONNX Runtime and OpenVINO (float32; OpenVINO bfloat16 as an
   extra row, not used by default), each with the ratio to torch and its largest deviation from
   the torch features;
3. the compute limit: multiply-adds per patch (``FlopCounterMode``) x patches/s = GMAC/s, beside
   a dense ViT-B/16 on the same cores (torch and OpenVINO), i.e. what these cores sustain;
4. end to end through :func:`histokd_core.features.encode_tiles` with the default backend
   (``"auto"``) and 0 / ``--workers`` loader processes: patches/s, read, wait and encode seconds.

Usage: ``python bench/bench_features.py [--patches 128] [--workers 2] [--threads 2] [--slide FILE]``
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from histokd_core.features import TileDataset, TorchPatchEncoder, encode_tiles, get_encoder
from histokd_core.features.runtime import ExportedPatchEncoder, OpenVINOGraph, available_runtimes
from histokd_core.slide import open_slide, patch_grid
from histokd_core.synthetic import write_synthetic_slide


class TorchViTB(torch.nn.Module):
    """ViT-B/16 at 224 px from torch built-ins: patch embedding, class token, 12 pre-norm blocks."""

    def __init__(self, width: int = 768, depth: int = 12, heads: int = 12, mlp: int = 3072) -> None:
        super().__init__()
        self.embed = torch.nn.Conv2d(3, width, kernel_size=16, stride=16)
        self.cls = torch.nn.Parameter(torch.zeros(1, 1, width))
        self.pos = torch.nn.Parameter(torch.randn(1, 1 + 14 * 14, width) * 0.02)
        layer = torch.nn.TransformerEncoderLayer(
            width, heads, mlp, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.blocks = torch.nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = torch.nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], dim=1) + self.pos
        return self.norm(self.blocks(tokens))[:, 0]


def vit_b_encoder() -> TorchPatchEncoder:
    """A ViT-B/16-sized encoder with random weights (timm cannot import beside the CPU torch wheel)."""
    torch.manual_seed(0)
    return TorchPatchEncoder(TorchViTB(), id="vit-b-random", dim=768, input_size=224, device="cpu", batch_size=16)


def macs_per_patch(module: torch.nn.Module, size: int = 224) -> float:
    """Multiply-accumulates of one patch (FLOPs / 2 as counted by torch)."""
    counter = FlopCounterMode(display=False)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused encoder kernel is not counted
    try:
        with counter, torch.no_grad():
            module(torch.zeros(1, 3, size, size))
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return counter.get_total_flops() / 2


#: patches per CPU-second of every throughput() call, by the order of the calls (see main)
CPU_RATES: list[float] = []


def throughput(encoder, tiles: np.ndarray, min_seconds: float) -> tuple[float, np.ndarray]:
    """Patches/s of ``encoder.encode`` on ``tiles`` (one warm-up call, then repeats for at least
    ``min_seconds``) and the features of the first call. Patches per CPU-second of this process
    (all its threads) go to :data:`CPU_RATES`: on a loaded machine, where the wall rate is the
    process's share of the cores, ``threads x`` that rate estimates the quiet-machine figure."""
    feats = encoder.encode(tiles)
    start, cpu, n = time.perf_counter(), time.process_time(), 0
    while True:
        encoder.encode(tiles)
        n += len(tiles)
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            CPU_RATES.append(n / max(time.process_time() - cpu, 1e-9))
            return n / elapsed, feats


def loader_stages(slide_path: Path, grid, coords: np.ndarray, encoder: TorchPatchEncoder) -> dict[str, float]:
    """Seconds per patch of read + decode, resize to 256 px and the encoder's pre-processing."""
    import torch.nn.functional as F

    read = resize = 0.0
    tiles = []
    with open_slide(slide_path) as slide:
        ds = slide.level_downsamples[grid.read_level]
        size = max(1, int(round(grid.patch_size_level0 / ds)))
        for x, y in coords:
            t0 = time.perf_counter()
            region = slide.read_region((int(x), int(y)), grid.read_level, (size, size))
            t1 = time.perf_counter()
            tile = torch.from_numpy(np.ascontiguousarray(region))
            if size != 256:
                t = F.interpolate(tile.permute(2, 0, 1)[None].float(), size=(256, 256), mode="bilinear", antialias=True)
                tile = t[0].permute(1, 2, 0).round_().clamp_(0, 255).to(torch.uint8)
            resize += time.perf_counter() - t1
            read += t1 - t0
            tiles.append(tile.numpy())
    batch = np.stack(tiles)
    with torch.inference_mode():
        t0 = time.perf_counter()
        for s in range(0, len(batch), 32):
            encoder.resize_uint8(batch[s : s + 32])
        to224 = time.perf_counter() - t0
        t0 = time.perf_counter()
        for s in range(0, len(batch), 32):
            encoder.preprocess(batch[s : s + 32])
        pre = time.perf_counter() - t0
    n = len(coords)
    return {"read": read / n, "resize 256": resize / n, "resize 224": to224 / n,
            "tiles": batch, "torch normalise": (pre - to224) / n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", type=int, default=128, help="patches per measurement (default 128)")
    parser.add_argument("--workers", type=int, default=2, help="tile-loader processes (default 2)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of every runtime (default 2)")
    parser.add_argument("--seconds", type=float, default=6.0, help="minimum seconds per encode row (default 6)")
    parser.add_argument("--slide", type=Path, default=None, help="slide to read (default: synthetic)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()

    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("HISTOKD_CACHE", str(Path(tmp) / "cache"))
        slide_path = args.slide
        if slide_path is None:
            slide_path = Path(tmp) / "bench.tif"
            write_synthetic_slide(slide_path, size_hw=(6144, 8192), mpp=0.25, seed=0)
        with open_slide(slide_path) as slide:
            grid = patch_grid(slide, target_mpp=0.5, patch_px=256, min_tissue=0.0)
            desc = f"{slide_path.name} {slide.dimensions[0]}x{slide.dimensions[1]} px at {slide.mpp} um/px"
        coords = grid.coords[: args.patches]
        lite0 = get_encoder("efficientnet-lite0", device="cpu", backend="torch")
        print(f"slide: {desc}; 20x patches of 256 px read at level {grid.read_level} "
              f"({grid.patch_size_level0} level-0 px), {len(coords)} per row")
        print(f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} cores, "
              f"load average at start {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}")

        stages = loader_stages(slide_path, grid, coords, lite0)
        tiles = stages.pop("tiles")
        normalise = stages.pop("torch normalise")
        per_patch = sum(stages.values())
        print("\n1. loader stages, one process (ms per patch)")
        for name, sec in stages.items():
            print(f"   {name:<16} {1000 * sec:7.2f}")
        print(f"   {'total':<16} {1000 * per_patch:7.2f}  -> {1 / per_patch:.0f} patches/s per core")
        print(f"   (torch path only: float conversion + normalisation {1000 * normalise:.2f} ms per patch; "
              "the exported graphs do it inside)")

        print("\n2. EfficientNet-Lite0 encode only (same tiles, batches of 64)")
        header = f"   {'runtime':<22} {'patches/s':>9} {'x torch':>8} {'max |diff|':>11} {'per CPU-s':>9}"
        print(header)
        ref_rate, ref = throughput(lite0, tiles, args.seconds)
        print(f"   {'torch (eager, NHWC)':<22} {ref_rate:9.1f} {1.0:8.2f} {0.0:11.2e} {CPU_RATES[-1]:9.1f}")
        rows = {"torch": (ref_rate, CPU_RATES[-1])}
        for backend in available_runtimes():
            enc = get_encoder("efficientnet-lite0", device="cpu", backend=backend)
            rate, feats = throughput(enc, tiles, args.seconds)
            rows[backend] = (rate, CPU_RATES[-1])
            print(f"   {backend + ' (f32)':<22} {rate:9.1f} {rate / ref_rate:8.2f} {np.abs(feats - ref).max():11.2e} "
                  f"{CPU_RATES[-1]:9.1f}")
        if "openvino" in rows:
            bf16 = ExportedPatchEncoder(lite0, "openvino")
            bf16.graph = OpenVINOGraph(bf16.path, args.threads, precision="bf16")
            rate, feats = throughput(bf16, tiles, args.seconds)
            cos = (feats * ref).sum(1) / np.linalg.norm(feats, axis=1) / np.linalg.norm(ref, axis=1)
            print(f"   {'openvino (bf16, opt.)':<22} {rate:9.1f} {rate / ref_rate:8.2f} {np.abs(feats - ref).max():11.2e} "
                  f"{CPU_RATES[-1]:9.1f}  (min cosine to torch {cos.min():.5f}; not used by default)")

        print("\n3. compute limit (multiply-adds per patch x patches/s)")
        vit = vit_b_encoder()
        lite_macs, vit_macs = macs_per_patch(lite0.module), macs_per_patch(vit.module)
        vit_rows = {"torch": (throughput(vit, tiles[:32], args.seconds)[0], CPU_RATES[-1])}
        if "openvino" in available_runtimes():
            rate = throughput(ExportedPatchEncoder(vit, "openvino"), tiles[:32], args.seconds)[0]
            vit_rows["openvino"] = (rate, CPU_RATES[-1])
        dense = max(vit_macs * r for r, _ in vit_rows.values()) / 1e9
        dense_cpu = max(vit_macs * c for _, c in vit_rows.values()) / 1e9
        print(f"   {'model / runtime':<32} {'GMAC/patch':>10} {'patches/s':>9} {'GMAC/s':>7} {'of dense':>8} "
              f"{'GMAC/CPU-s':>10} {'of dense':>8}")
        for label, macs, table in (("ViT-B/16", vit_macs, vit_rows), ("EfficientNet-Lite0", lite_macs, rows)):
            for name, (rate, cpu) in table.items():
                g, gc = macs * rate / 1e9, macs * cpu / 1e9
                print(f"   {label + ' / ' + name:<32} {macs / 1e9:10.3f} {rate:9.2f} {g:7.1f} {g / dense:8.2f} "
                      f"{gc:10.1f} {gc / dense_cpu:8.2f}")
        print(f"   if EfficientNet-Lite0 ran at the dense model's GMAC/s: {dense * 1e9 / lite_macs:.0f} patches/s "
              f"({args.threads} x {dense_cpu * 1e9 / lite_macs:.0f} per CPU-second on quiet cores)")

        print(f"\n4. end to end (encode_tiles, backend auto, {len(coords)} patches)")
        auto = get_encoder("efficientnet-lite0", device="cpu")
        print(f"   backend: {getattr(auto, 'backend', 'torch')}")
        print(f"   {'loader procs':<12} {'patches/s':>9} {'wall s':>7} {'read s':>7} {'wait s':>7} {'encode s':>8}")
        for workers in (0, args.workers):
            dataset = TileDataset(slide_path, coords, grid.patch_size_level0, grid.read_level, 256)
            feats, st = encode_tiles(dataset, auto, num_workers=workers)
            assert feats.shape == (len(coords), 1280) and np.isfinite(feats).all()
            print(f"   {workers:<12} {st.patches_per_s:9.1f} {st.wall_s:7.2f} {st.read_s:7.2f} {st.wait_s:7.2f} {st.encode_s:8.2f}")
        print("   read s: read + decode + resize summed over loader processes; wait s: time the encoder "
              "waited for tiles (worker start-up included)")
    end = os.getloadavg()
    print(f"\nload average at end {end[0]:.1f} / {end[1]:.1f} / {end[2]:.1f}")


if __name__ == "__main__":
    main()
