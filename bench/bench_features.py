"""Patch-feature extraction throughput on CPU, with the parallel tile loader.

Encoders: the embedded default (ImageNet EfficientNet-Lite0), a ViT-B-sized model with random
weights (timm's ``vit_base_patch16_224`` when timm is importable, otherwise a ViT-B/16 built from
torch's own ``nn.TransformerEncoder``: 12 layers, width 768, 12 heads, MLP 3072; the table says
which) and the ``hed-texture`` descriptor. Tiles come from a synthetic pyramidal slide (or
``--slide``) through :func:`histokd_core.features.encode_tiles`, which reports the slide-read time
(summed over loader workers), the time the model waited for tiles and the encode time, so the
bottleneck is visible. A read-only row gives the loader's throughput with no model.

Usage: ``python bench/bench_features.py [--patches 96] [--workers 2] [--slide FILE]``
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from histokd_core.features import TileDataset, TorchPatchEncoder, encode_tiles, get_encoder
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
        tokens = torch.cat([self.cls.expand(len(x), -1, -1), tokens], dim=1) + self.pos
        return self.norm(self.blocks(tokens))[:, 0]


def vit_b_encoder() -> tuple[TorchPatchEncoder, str]:
    torch.manual_seed(0)
    try:
        import timm

        module, name = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0), "timm vit_base_patch16_224"
    except ImportError:
        module, name = TorchViTB(), "ViT-B/16 (torch nn.TransformerEncoder; timm not importable)"
    params = sum(p.numel() for p in module.parameters()) / 1e6
    enc = TorchPatchEncoder(module, id="vit-b-random", dim=768, input_size=224, device="cpu", batch_size=16)
    return enc, f"{name}, {params:.0f} M params, random weights"


def read_only(dataset: TileDataset, workers: int, batch_size: int) -> tuple[float, float]:
    """Wall time and summed per-tile read time of iterating the loader without a model."""
    from torch.utils.data import DataLoader

    from histokd_core.features.extract import loader_context

    loader = DataLoader(
        dataset, batch_size=batch_size, num_workers=workers,
        multiprocessing_context=loader_context() if workers else None,
    )
    start, read = time.perf_counter(), 0.0
    for _, seconds in loader:
        read += float(seconds.sum())
    return time.perf_counter() - start, read


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", type=int, default=96, help="patches per run (default 96)")
    parser.add_argument("--workers", type=int, default=2, help="tile-loader processes (default 2)")
    parser.add_argument("--slide", type=Path, default=None, help="slide to read (default: synthetic)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        slide_path = args.slide
        if slide_path is None:
            slide_path = Path(tmp) / "bench.tif"
            write_synthetic_slide(slide_path, size_hw=(4096, 6144), mpp=0.25, seed=0)
        with open_slide(slide_path) as slide:
            grid = patch_grid(slide, target_mpp=0.5, patch_px=256, min_tissue=0.0)
            desc = f"{slide_path.name} {slide.dimensions[0]}x{slide.dimensions[1]} px at {slide.mpp} um/px"
        coords = grid.coords[: args.patches]
        dataset = TileDataset(slide_path, coords, grid.patch_size_level0, grid.read_level, 256)

        vit, vit_name = vit_b_encoder()
        runs = [
            ("efficientnet-lite0", get_encoder("efficientnet-lite0", device="cpu"), 0),
            ("efficientnet-lite0", get_encoder("efficientnet-lite0", device="cpu"), args.workers),
            ("ViT-B (random)", vit, args.workers),
            ("hed-texture", get_encoder("hed-texture"), args.workers),
        ]
        print(f"slide: {desc}; 20x patches of 256 px read at level {grid.read_level} "
              f"({grid.patch_size_level0} level-0 px), {len(coords)} per run")
        print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, {os.cpu_count()} cores; ViT-B: {vit_name}")
        header = f"{'encoder':<20} {'loader':>6} {'patches/s':>10} {'wall s':>8} {'read s':>8} {'wait s':>8} {'encode s':>9}"
        print(header)
        print("-" * len(header))
        wall, read = read_only(dataset, args.workers, 32)
        print(f"{'(read only)':<20} {args.workers:>6} {len(coords) / wall:>10.1f} {wall:>8.2f} {read:>8.2f} {'-':>8} {'-':>9}")
        encode_tiles(TileDataset(slide_path, coords[:8], grid.patch_size_level0, grid.read_level, 256),
                     runs[0][1], batch_size=8, num_workers=0)  # warm-up
        for name, enc, workers in runs:
            feats, stats = encode_tiles(dataset, enc, batch_size=32, num_workers=workers)
            assert feats.shape == (len(coords), enc.dim) and np.isfinite(feats).all()
            print(
                f"{name:<20} {workers:>6} {stats.patches_per_s:>10.1f} {stats.wall_s:>8.2f} "
                f"{stats.read_s:>8.2f} {stats.wait_s:>8.2f} {stats.encode_s:>9.2f}"
            )
        print("read s: tile read + decode + resize, summed over loader workers; wait s: time the model "
              "waited for tiles; a small wait with a large encode means compute-bound.")


if __name__ == "__main__":
    main()
