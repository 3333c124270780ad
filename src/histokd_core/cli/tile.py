"""``histokd tile SLIDE``: detect tissue and write the patch grid (level-0 top-left coordinates)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "tile",
        help="compute the tissue patch grid of a slide",
        description=(
            "Detect tissue on a low-resolution level and write the level-0 top-left (x, y) of "
            "every patch with enough tissue, at a target resolution (0.5 um/px = 20x, "
            "1.0 um/px = 10x)."
        ),
    )
    p.add_argument("slide", type=Path, help="whole-slide image (.svs, .tif, .ndpi, ...)")
    p.add_argument("--mpp", type=float, help="microns per level-0 pixel, when the slide has none")
    p.add_argument(
        "--target-mpp", type=float, default=0.5, help="um/px of the patches (0.5 = 20x, default)"
    )
    p.add_argument("--patch-px", type=int, default=256, help="patch side in px at --target-mpp")
    p.add_argument("--overlap-px", type=int, default=0, help="overlap between patches in px")
    p.add_argument("--min-tissue", type=float, default=0.5, help="minimum tissue fraction 0..1")
    p.add_argument(
        "--out", type=Path, help="output .csv or .npz (default: SLIDE-STEM.patches.csv in .)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    return p


def run(args: argparse.Namespace) -> int:
    from histokd_core.slide import open_slide, patch_grid, tissue_mask

    out = args.out or Path.cwd() / f"{args.slide.stem}.patches.csv"
    with open_slide(args.slide, mpp=args.mpp) as slide:
        slide.require_mpp()
        mask = tissue_mask(slide)
        grid = patch_grid(
            slide,
            target_mpp=args.target_mpp,
            patch_px=args.patch_px,
            min_tissue=args.min_tissue,
            mask=mask,
            overlap_px=args.overlap_px,
        )
        path = grid.save(out, overwrite=args.overwrite)
        w, h = slide.dimensions
        print(
            f"{slide.path.name}: {w}x{h} px at {slide.mpp:g} um/px, "
            f"tissue {100 * mask.fraction:.1f}% "
            f"-> {len(grid)} patches of {grid.patch_px} px at {grid.target_mpp:g} um/px "
            f"({grid.patch_size_level0} level-0 px) written to {path}"
        )
    return 0
