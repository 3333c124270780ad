"""Why stain normalisation does or does not bring two sites together, tile by tile (issue 17).

One synthetic slide (2048 x 2048 px at 0.5 um/px, the four planted region kinds) is re-stained
as ``bench/bench_stain.py`` re-stains site B (``StainShift.tilted(1.0)``, JPEG quality 90), once
with the planted shift's default glass intensity (``io`` 256: glass ~243 is slightly stained
and turns blue-grey) and once with ``io`` 240 (glass stays white). Reported:

- **tissue detection**: patches kept by the tissue mask (min tissue 0.5, 256 px at 20x) on the
  original and on each re-stained slide: features of a site average over the patches *its own*
  mask keeps;
- **stain vectors**: the median cosine between torchstain's per-tile Macenko fit and the planted
  vectors (Ruifrok-Johnston on the original; the shift's own vectors on the re-stained copy), and
  the share of optical density off the fitted H-E plane (what the two-stain re-synthesis drops);
- **same-coordinate tiles** (the original slide's patches and the re-stained copies of the same
  patches): mean absolute pixel difference (0..255) and the distance between the two sites'
  mean HED-texture feature (in units of the original tiles' per-feature standard deviation), for
  no normalisation, the shipped Macenko and Reinhard (one reference fitted on both sites' tiles,
  as ``--stain`` does), and Macenko with torchstain's transmitted intensity ``Io`` or
  transparency threshold ``beta`` changed.

Run (about 2 minutes on one core):  nice -n 10 python bench/bench_stain_tiles.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def read_tiles(path: Path, coords) -> np.ndarray:
    from histokd_core.slide import open_slide

    with open_slide(path) as slide:
        return np.stack([slide.read_region((int(x), int(y)), 0, (256, 256)) for x, y in coords])


def grid_coords(path: Path) -> np.ndarray:
    from histokd_core.slide import open_slide, patch_grid

    with open_slide(path) as slide:
        return patch_grid(slide, target_mpp=0.5, patch_px=256, min_tissue=0.5).coords


def macenko_variant(reference_tiles: np.ndarray, io: float, beta: float):
    """A torchstain Macenko normaliser fitted and applied with ``Io = io`` and ``beta``."""
    from torchstain.torch.normalizers import TorchMacenkoNormalizer

    from histokd_core.features.stain import _chw, mosaic

    norm = TorchMacenkoNormalizer()
    norm.fit(_chw(mosaic(reference_tiles)), Io=io, beta=beta)
    return lambda t: norm.normalize(_chw(t), Io=io, beta=beta, stains=False)[0].clamp(0, 255).numpy().astype(np.uint8)


def fitted_vectors(tile: np.ndarray) -> np.ndarray:
    """torchstain's Macenko stain vectors of one tile, ``(3, 2)`` (columns H, E)."""
    from torchstain.torch.normalizers import TorchMacenkoNormalizer

    from histokd_core.features.stain import _chw

    norm = TorchMacenkoNormalizer()
    norm.fit(_chw(tile))
    return norm.HERef.numpy().astype(np.float64)


def off_plane_share(tiles: np.ndarray, he: np.ndarray) -> float:
    """Share of the optical density (Io 240, pixels stained in every channel) off the plane of ``he``."""
    od = -np.log((tiles.reshape(-1, 3).astype(np.float64) + 1.0) / 240.0)
    od = od[(od >= 0.15).all(axis=1)]
    coef, *_ = np.linalg.lstsq(he, od.T, rcond=None)
    return float(((od.T - he @ coef) ** 2).sum() / (od**2).sum())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("/tmp/stain-tiles"))
    p.add_argument("--seed", type=int, default=3)
    args = p.parse_args()
    import torch

    from histokd_core.features.hed import FEATURE_NAMES, describe_patch
    from histokd_core.features.stain import StainNormalizer, fit_reference
    from histokd_core.synthetic import PlantedRegion, write_synthetic_slide
    from histokd_core.synthetic.stain import EOSIN, HEMATOXYLIN, StainShift, write_restained_slide

    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    shift = StainShift.tilted(1.0)
    original = args.out / "original.tif"
    if not original.is_file():
        regions = [PlantedRegion("tumor", 100, 100, 700, 700), PlantedRegion("immune", 1200, 200, 1700, 700),
                   PlantedRegion("stroma", 200, 1200, 700, 1700), PlantedRegion("necrosis", 1200, 1200, 1600, 1600)]
        write_synthetic_slide(original, (2048, 2048), mpp=0.5, regions=regions, seed=args.seed, workers=1)
    shifted = {}
    for io in (256, 240):
        shifted[io] = args.out / f"restained_io{io}.tif"
        if not shifted[io].is_file():
            write_restained_slide(original, shifted[io], shift, io=io)

    coords = grid_coords(original)
    print(f"tissue patches kept: original {len(coords)}, " + ", ".join(
        f"re-stained (io {io}) {len(grid_coords(path))}" for io, path in shifted.items()))
    tiles_a = read_tiles(original, coords)
    unit = lambda v: np.asarray(v) / np.linalg.norm(v)  # noqa: E731
    cosines = []
    for ta, tb in zip(tiles_a, read_tiles(shifted[256], coords)):
        try:
            fa, fb = fitted_vectors(ta), fitted_vectors(tb)
        except (RuntimeError, IndexError, ValueError):
            continue
        cosines.append([unit(fa[:, 0]) @ unit(HEMATOXYLIN), unit(fa[:, 1]) @ unit(EOSIN),
                        unit(fb[:, 0]) @ unit(shift.hematoxylin), unit(fb[:, 1]) @ unit(shift.eosin)])
    c = np.median(np.array(cosines), axis=0)
    print(f"per-tile Macenko fit, median cosine to the planted vectors ({len(cosines)} tiles): original H {c[0]:.3f}, "
          f"E {c[1]:.3f}; re-stained (io 256) H {c[2]:.3f}, E {c[3]:.3f}")

    raw_a = np.stack([describe_patch(t) for t in tiles_a])
    sd = raw_a.std(axis=0) + 1e-6

    def row(name: str, na: np.ndarray, nb: np.ndarray) -> None:
        fa = np.stack([describe_patch(t) for t in na])
        fb = np.stack([describe_patch(t) for t in nb])
        z = (fb.mean(axis=0) - fa.mean(axis=0)) / sd
        top = ", ".join(f"{FEATURE_NAMES[i]} {z[i]:+.1f}" for i in np.argsort(-np.abs(z))[:3])
        print(f"| {name} | {np.abs(na.astype(int) - nb).mean():.1f} | {np.linalg.norm(z):.2f} | {top} |")

    for io, path in shifted.items():
        tiles_b = read_tiles(path, coords)
        both = np.concatenate([tiles_a, tiles_b])
        print(f"\nsame-coordinate tiles ({len(coords)}), site B re-stained with io {io}")
        he = np.asarray(fit_reference(both, "macenko").params["HERef"])
        print(f"optical density off the cohort reference's H-E plane: original {off_plane_share(tiles_a, he):.3f}, "
              f"re-stained {off_plane_share(tiles_b, he):.3f}")
        print("| normalisation | pixel difference A-B | HED-texture site-mean distance "
              "| largest features (B - A, sd) |")
        print("|---|---|---|---|")
        row("none", tiles_a, tiles_b)
        for method in ("macenko", "reinhard"):
            norm = StainNormalizer(fit_reference(both, method))
            na, nb = np.stack([norm(t) for t in tiles_a]), np.stack([norm(t) for t in tiles_b])
            row(f"{method} (shipped; {norm.n_unchanged} tiles unchanged)", na, nb)
        for tio, beta in ((256, 0.15), (240, 0.05), (256, 0.05)):
            f = macenko_variant(both, tio, beta)
            row(f"macenko, Io {tio}, beta {beta}", np.stack([f(t) for t in tiles_a]),
                np.stack([f(t) for t in tiles_b]))


if __name__ == "__main__":
    main()
