"""Fine heatmaps of one slide: overlapping-stride features through a trained student, averaged per pixel.

The patches of a heatmap are not those of training: :func:`fine_maps_slide` lays out a heatmap
grid (:func:`histokd_core.explain.fine.heatmap_grid`: stride = patch / 2 or / 4, its own
minimum tissue, edge patches kept), extracts their features with the checkpoint's encoder into
a separate store (with the checkpoint's stain normalisation; resumable: a complete store with the
same grid is reused), runs the model on
them and returns one :class:`~histokd_core.explain.fine.FineMap` per per-patch map.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from histokd_core.cancel import CancelToken
from histokd_core.errors import DataError
from histokd_core.progress import ProgressEvent, ProgressFn

if TYPE_CHECKING:
    from histokd_core.explain.fine import FineMap
    from histokd_core.methods.base import Explanation

log = logging.getLogger(__name__)


@dataclass
class FineMaps:
    """Result of :func:`fine_maps_slide`.

    Attributes
    ----------
    maps : map name (``"attention"``, ``"pathway:<name>"``, ``"memory:<component>"``) ->
        :class:`FineMap` (multiscale, lazy, float32, NaN off the patches).
    explanation : the model's explanation of the overlapping patches (its attention sums to 1
        over them: with stride P/4 each value is about 1/16 of a stride-P attention).
    meta : the checkpoint's metadata; slide_id : name in the heatmap store;
    features_path : the heatmap feature store; mpp : microns per level-0 px of the slide.
    """

    maps: dict[str, FineMap]
    explanation: Explanation
    meta: dict
    slide_id: str
    features_path: Path
    mpp: float


def fine_maps_slide(
    checkpoint: str | os.PathLike,
    slide_path: str | os.PathLike,
    extract_to: str | os.PathLike,
    *,
    stride_div: int = 4,
    min_tissue: float = 0.1,
    patch_px: int = 256,
    mpp: float | None = None,
    downsample: float | None = None,
    mask_glass: bool = True,
    slide_id: str | None = None,
    device: str = "auto",
    num_workers: int = 2,
    batch_size: int | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelToken | threading.Event | Callable[[], bool] | None = None,
) -> FineMaps:
    """Fine (overlap-averaged) maps of one slide with a trained slide-only model.

    Parameters
    ----------
    checkpoint : ``<stage>.safetensors`` of a slide-only model (a student or a WSI baseline).
    slide_path : the whole-slide image.
    extract_to : store root for the heatmap features (keep it apart from the training store:
        the same slide id holds a different grid here).
    stride_div : stride = patch / ``stride_div`` (2 or 4 as CLAM; 1 = the training lattice).
    min_tissue : minimum tissue fraction of a heatmap patch (0..1), default 0.1.
    patch_px : patch side in px at each magnification, as the model's features were extracted.
    mpp : microns per level-0 px when the slide does not record it.
    downsample : level-0 px per pixel of the finest map level (default: exact, see
        :func:`histokd_core.explain.fine.fine_map`).
    mask_glass : leave pixels whose centre is not tissue transparent (NaN).
    slide_id : name in the store (default the slide file's name).
    device : ``"auto"``, ``"cpu"``, ``"cuda"``; num_workers, batch_size : tile loading and encoder
        batch (as :func:`histokd_core.features.extract_slide`).
    progress : ``"message"`` events with a fraction and a status line; cancel : checked between
        steps and after every encoder batch (raises :class:`~histokd_core.errors.Cancelled`).
    """
    from histokd_core.devices import resolve_device
    from histokd_core.explain.fine import fine_map, heatmap_grid
    from histokd_core.features import get_encoder, spec_from_id
    from histokd_core.features.stain import reference_from_meta
    from histokd_core.features.slide_features import mag_to_mpp, slide_id_of
    from histokd_core.slide import open_slide, tissue_mask
    from histokd_core.workflows.inference import explain_bag, load_slide_model, read_slide_bag
    from histokd_core.workflows.predict import explanation_detections

    token = CancelToken.of(cancel)

    def step(frac: float, msg: str) -> None:
        token.check(f"fine maps ({msg})")
        if progress is not None:
            progress(ProgressEvent("message", frac, msg))

    checkpoint, slide_path, root = Path(checkpoint), Path(slide_path), Path(extract_to)
    slide_id = slide_id or slide_id_of(slide_path.name)
    step(0.0, f"loading {checkpoint.name}")
    dev = resolve_device(device)
    model, meta = load_slide_model(checkpoint, dev)
    info = meta.get("data_info", {})
    encoder_id = meta.get("encoder_id") or info.get("encoder_id")
    if not encoder_id:
        raise DataError(f"{checkpoint}: the checkpoint does not say which encoder made its features")
    mags = ("20x", "10x") if info.get("has_10x") else ("20x",)
    with open_slide(slide_path, mpp=mpp) as slide:
        slide_mpp = slide.require_mpp()
        mask = tissue_mask(slide)
        grids = {m: heatmap_grid(slide, mag_to_mpp(m), patch_px, stride_div, min_tissue, mask)
                 for m in mags}
        dimensions = tuple(int(v) for v in slide.dimensions)
    if len(grids["20x"]) == 0:
        raise DataError(f"{slide_path}: no patch holds {min_tissue:.0%} tissue; lower min_tissue")
    heat = {"stride_div": int(stride_div), "min_tissue": float(min_tissue), "mags": list(mags)}
    reference = reference_from_meta(meta, str(checkpoint))
    if not _stored(root, slide_id, encoder_id, heat):
        step(0.05, f"loading encoder {encoder_id}")
        encoder = get_encoder(spec_from_id(encoder_id), device=str(dev))
        if encoder.id != encoder_id:
            raise DataError(f"{checkpoint}: trained on features of {encoder_id}, but the encoder "
                            f"available here is {encoder.id}")
        _extract(slide_path, root, slide_id, encoder, grids, patch_px, slide_mpp, mpp, heat,
                 dimensions, num_workers, batch_size, step, reference)
    step(0.8, "reading heatmap features")
    bag, _ = read_slide_bag(root, slide_id, meta, checkpoint)
    step(0.85, f"explaining {bag.feats.shape[0]} overlapping patches")
    expl = explain_bag(model, bag, dev)
    values, _ = explanation_detections(expl)
    values = {k: v for k, v in values.items() if not k.startswith("cluster:")}
    grid = grids["20x"]
    maps = {name: fine_map(expl.coords, v, expl.patch_size, dimensions, downsample=downsample,
                           stride=grid.stride_level0, tissue=mask if mask_glass else None)
            for name, v in values.items()}
    step(1.0, f"{len(maps)} fine maps of {len(expl.coords)} patches (stride {grid.stride_level0} px)")
    return FineMaps(maps, expl, meta, slide_id, root, slide_mpp)


def _stored(root: Path, slide_id: str, encoder_id: str, heat: dict) -> bool:
    """Whether ``root`` holds this slide's complete heatmap features for the same grid."""
    from histokd_core.features.store import read_slide_attrs, slide_group_path

    attrs = read_slide_attrs(root, slide_id)
    if attrs is None:
        return False
    same = attrs.get("encoder_id") == encoder_id and attrs.get("heatmap") == heat
    if not same:
        raise DataError(
            f"{slide_group_path(root, slide_id)} holds other features ({attrs.get('encoder_id')}, "
            f"heatmap grid {attrs.get('heatmap')}); choose another heatmap folder"
        )
    return bool(attrs.get("complete"))


def _extract(slide_path, root, slide_id, encoder, grids, patch_px, slide_mpp, mpp, heat,
             dimensions, num_workers, batch_size, step, reference) -> None:
    from histokd_core.features.extract import TileDataset, encode_tiles
    from histokd_core.features.stain import stain_id
    from histokd_core.features.store import PREPROCESSING_VERSION, mark_complete, write_slide_features

    total = sum(len(g) for g in grids.values())
    offset = 0
    for mag, grid in grids.items():
        dataset = TileDataset(slide_path, grid.coords, grid.patch_size_level0, grid.read_level,
                              patch_px, mpp, reference)

        def report(done: int, base: int = offset) -> None:
            step(0.1 + 0.7 * (base + done) / max(total, 1),
                 f"extracting heatmap features {base + done}/{total}")

        feats, stats = encode_tiles(dataset, encoder, batch_size=batch_size,
                                    num_workers=num_workers, progress=report)
        offset += len(grid)
        attrs = {
            "encoder_id": encoder.id, "weights_hash": encoder.weights_hash, "patch_px": patch_px,
            "feat_dim": encoder.dim, "mpp": slide_mpp, "slide_path": str(Path(slide_path).resolve()),
            "slide_dimensions": list(dimensions), "min_tissue": heat["min_tissue"], "heatmap": heat,
            "target_mpp": grid.target_mpp, "patch_size_level0": grid.patch_size_level0,
            "stride_level0": grid.stride_level0, "read_level": grid.read_level, "complete": False,
            "stain": stain_id(reference), "preprocessing": PREPROCESSING_VERSION,
        }
        if reference is not None:
            attrs["stain_reference"] = reference.to_attrs()
        write_slide_features(root, slide_id, mag, feats, grid.coords, attrs)
        log.info("%s %s: %d heatmap patches, %.1f patches/s", slide_id, mag, len(grid),
                 stats.patches_per_s)
    mark_complete(root, slide_id)
