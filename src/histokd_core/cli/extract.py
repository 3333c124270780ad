"""``histokd extract SLIDES... --out DIR``: patch features of many slides on dask.distributed."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from histokd_core.errors import DataError


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "extract",
        help="extract patch features of slides into a feature store",
        description=(
            "Tile every slide (tissue patches at each magnification), encode the patches and write "
            "one zarr group per slide under --out. One dask task per slide (a local cluster unless "
            "--scheduler is given). Finished slides are skipped when run again; a bad slide is "
            "reported and the others finish (exit code 1 when any failed)."
        ),
    )
    p.add_argument("slides", nargs="+", type=Path, help="slide files, or folders of slides")
    p.add_argument("--out", type=Path, required=True, help="feature store folder")
    p.add_argument(
        "--encoder",
        default="efficientnet-lite0",
        help="efficientnet-lite0 (default), hed-texture, timm:<arch>:<weights>, torchscript:<file>",
    )
    p.add_argument("--mpp", type=float, default=None, help="microns per level-0 pixel for slides without it")
    p.add_argument("--magnifications", default="20x,10x", help="comma-separated, e.g. 20x,10x (default)")
    p.add_argument("--patch-px", type=int, default=256, help="patch side in px (default 256)")
    p.add_argument("--min-tissue", type=float, default=0.5, help="minimum tissue fraction 0..1 (default 0.5)")
    p.add_argument(
        "--batch-size", type=int, default=None,
        help="patches per encoder call (default: the encoder's, 64 on CPU, from free memory on CUDA)",
    )
    p.add_argument(
        "--backend", default="auto", choices=["auto", "torch", "openvino", "onnxruntime"],
        help="encoder runtime on CPU (default auto: OpenVINO or ONNX Runtime when installed for the "
        "built-in EfficientNet-Lite0, torch otherwise and always on CUDA)",
    )
    p.add_argument("--scheduler", default=None, help="address of a running dask scheduler (tcp://host:8786)")
    p.add_argument("--workers", type=int, default=2, help="local dask worker processes (default 2; ignored with --scheduler)")
    p.add_argument("--loader-workers", type=int, default=2, help="tile-reading processes per slide (default 2)")
    p.add_argument("--device", default="auto", help="auto (CUDA > MPS > CPU), cpu, cuda, mps")
    p.add_argument(
        "--overwrite", action="store_true",
        help="extract again the slides whose stored features were made with another encoder, "
        "stain setting or preprocessing version",
    )
    p.add_argument(
        "--stain", choices=("none", "macenko", "reinhard"), default="none",
        help="stain-normalise patches to one reference fitted once on this cohort (default none)",
    )
    p.add_argument(
        "--stain-reference", type=Path, default=None,
        help="stain_reference.json to normalise to (e.g. the training cohort's, for an external "
        "cohort), or a trained checkpoint (.safetensors): the reference its features were made with",
    )
    p.add_argument(
        "--bad-tiles", choices=("fail", "skip"), default="fail",
        help="implausible decoded tiles (decoder errors, broken JPEG 2000 tiles, constant or "
        "out-of-gamut tiles among tissue): fail the slide (default) or skip those patches and "
        "mark the slide degraded",
    )
    return p


def expand_slides(items: list[Path]) -> list[Path]:
    """Files as given; a DICOM WSI folder as one slide; other folders replaced by the slide files
    and DICOM WSI sub-folders they contain (sorted)."""
    from histokd_core.features.slide_features import SLIDE_EXTENSIONS
    from histokd_core.slide.backends import dicom_files

    out: list[Path] = []
    for item in items:
        if item.is_dir() and dicom_files(item):
            out.append(item)
        elif item.is_dir():
            found = sorted(
                p for p in item.iterdir()
                if (p.is_file() and p.suffix.lower() in SLIDE_EXTENSIONS and p.suffix.lower() != ".dcm")
                or (p.is_dir() and dicom_files(p))
            )
            if not found:
                raise DataError(f"{item}: folder holds no slide files ({', '.join(SLIDE_EXTENSIONS)})")
            out.extend(found)
        else:
            out.append(item)
    return out


def run(args: argparse.Namespace) -> int:
    import distributed  # noqa: F401 - configures its loggers on import; quieten them after

    from histokd_core.features import lifeline
    from histokd_core.features.cohort_extract import extract_cohort

    logging.getLogger("distributed").setLevel(logging.WARNING)
    slides = expand_slides(args.slides)
    mags = tuple(m.strip() for m in args.magnifications.split(",") if m.strip())
    try:
        from tqdm import tqdm

        bar = tqdm(total=len(slides), unit="slide", desc="extract", file=sys.stderr)
    except ImportError:  # pragma: no cover - tqdm ships with dask's dependencies
        bar = None

    def progress(done: int, total: int, slide_id: str, ok: bool) -> None:
        if bar is not None:
            bar.set_postfix_str(f"{slide_id} {'ok' if ok else 'FAILED'}")
            bar.update(1)
        else:
            print(f"[{done}/{total}] {slide_id} {'ok' if ok else 'FAILED'}", file=sys.stderr)

    owner = os.environ.get(lifeline.ENV)
    os.environ[lifeline.ENV] = str(os.getpid())  # helper processes end when this one does
    try:
        report = extract_cohort(
            slides,
            args.out,
            encoder=args.encoder,
            magnifications=mags,
            patch_px=args.patch_px,
            mpp=args.mpp,
            min_tissue=args.min_tissue,
            batch_size=args.batch_size,
            scheduler=args.scheduler,
            n_workers=args.workers,
            loader_workers=args.loader_workers,
            device=args.device,
            backend=args.backend,
            overwrite=args.overwrite,
            progress=progress,
            stain=args.stain,
            stain_reference=args.stain_reference,
            bad_tiles=args.bad_tiles,
        )
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
            bar = None
        print(f"histokd extract: interrupted; finished slides are kept in {args.out} (run the "
              "same command again to continue)", file=sys.stderr)
        return 130
    finally:
        if bar is not None:
            bar.close()
        if owner is None:
            os.environ.pop(lifeline.ENV, None)
        else:
            os.environ[lifeline.ENV] = owner
    print(report.summary())
    print(f"features in {args.out}")
    return 0 if report.ok else 1
