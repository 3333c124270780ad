"""Analyse a slide: features (stored or extracted now) through a trained checkpoint -> Explanation.

This is what the napari Analyse dock runs in its worker thread; it never imports Qt.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from histokd_core.cancel import CancelToken
from histokd_core.errors import DataError
from histokd_core.progress import ProgressEvent, ProgressFn

if TYPE_CHECKING:
    from histokd_core.methods.base import Explanation

log = logging.getLogger(__name__)


class ExtractionRate:
    """Status lines of a running extraction: patches done, patches/s and time left.

    The rate is measured from the first report (so encoder loading and tissue detection do not
    count) over the patches encoded since then.
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self._t0: float | None = None
        self._n0 = 0

    def message(self, done: int, total: int) -> str:
        """``"extracting features 120/540 patches, 15.2 patches/s, 28 s left"``."""
        now = self.clock()
        head = f"extracting features {done}/{total} patches"
        if self._t0 is None:
            self._t0, self._n0 = now, done
            return head
        elapsed = now - self._t0
        if elapsed <= 0 or done <= self._n0:
            return head
        per_s = (done - self._n0) / elapsed
        left = (total - done) / per_s
        return f"{head}, {per_s:.1f} patches/s, {_duration(left)} left"


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s} s" if s < 120 else f"{s // 60} min {s % 60:02d} s"


@dataclass
class Analysis:
    """Result of :func:`analyse_slide`.

    Attributes
    ----------
    explanation : the model's per-patch maps, risk/probability and risk group.
    meta : the checkpoint's metadata (method, stage, fold, data_info, ...).
    slide_id : features store name of the slide.
    features_path : where the features were read from (a store written now with "extract now").
    slide_path : the slide file, when known (for crops and the slide's mpp).
    """

    explanation: Explanation
    meta: dict
    slide_id: str
    features_path: Path
    slide_path: Path | None = None

    @property
    def method(self) -> str:
        return str(self.meta.get("method", ""))


def analyse_slide(
    checkpoint: str | os.PathLike,
    features: str | os.PathLike | None = None,
    slide_id: str | None = None,
    slide_path: str | os.PathLike | None = None,
    extract_to: str | os.PathLike | None = None,
    device: str = "auto",
    progress: ProgressFn | None = None,
    cancel: CancelToken | threading.Event | Callable[[], bool] | None = None,
    mpp: float | None = None,
) -> Analysis:
    """Explain one slide with a trained (slide-only) model.

    Parameters
    ----------
    checkpoint : ``<stage>.safetensors`` written by ``histokd train`` (any method).
    features : a feature store folder, one ``.zarr``/``.h5``/``.pt`` file, or None to extract.
    slide_id : the slide's name in the store (default: the slide or feature file's name).
    slide_path : the slide file, needed to extract features now.
    extract_to : store root for features extracted now (with the checkpoint's encoder, and its
        stain normalisation to the reference recorded in it).
    device : "auto" (CUDA when present), "cpu", "cuda".
    progress : receives ``"message"`` :class:`~histokd_core.progress.ProgressEvent` s
        (``fraction`` 0..1 and a status line).
    cancel : checked between steps and between encoder sub-batches during extraction (about
        every 0.25 s); a cancelled token raises :class:`~histokd_core.errors.Cancelled`, and the
        patches extracted so far are kept for the next run.
    mpp : microns per level-0 pixel of the slide, for extraction; overrides the slide's metadata
        and is required when the slide has none.
    """
    from histokd_core.devices import resolve_device
    from histokd_core.features.slide_features import slide_id_of
    from histokd_core.workflows.inference import (
        explain_bag,
        load_slide_model,
        read_slide_bag,
        risk_group_from_run,
    )

    token = CancelToken.of(cancel)

    def step(frac: float, msg: str) -> None:
        token.check(f"analysis ({msg})")
        if progress is not None:
            progress(ProgressEvent("message", frac, msg))

    checkpoint = Path(checkpoint)
    step(0.0, f"loading {checkpoint.name}")
    dev = resolve_device(device)
    model, meta = load_slide_model(checkpoint, dev)
    if features is None or str(features) == "":
        if slide_path is None or extract_to is None:
            raise DataError("features: choose a feature store, or a slide and a folder to extract into")
        from histokd_core.features import extract_slide, get_encoder, spec_from_id
        from histokd_core.features.stain import reference_from_meta, save_reference, stain_id
        from histokd_core.features.store import PREPROCESSING_VERSION, check_store

        encoder_id = meta.get("encoder_id") or meta.get("data_info", {}).get("encoder_id")
        if not encoder_id:
            raise DataError(f"{checkpoint}: the checkpoint does not say which encoder made its features")
        from histokd_core.slide import open_slide

        with open_slide(slide_path, mpp=mpp) as slide:
            slide.require_mpp()  # before the encoder loads: a missing mpp fails at once
        step(0.02, f"loading encoder {encoder_id}")
        encoder = get_encoder(spec_from_id(encoder_id), device=str(dev))
        if encoder.id != encoder_id:
            raise DataError(
                f"{checkpoint}: the model was trained on features of {encoder_id}, but the "
                f"encoder available here is {encoder.id} (other weights); extract with the "
                "original encoder and choose that feature store"
            )
        slide_id = slide_id or slide_id_of(Path(slide_path).name)
        # the model's stain normalisation, with the reference its training features were made with
        reference = reference_from_meta(meta, str(checkpoint))
        check_store(extract_to, {"stain": stain_id(reference), "preprocessing": PREPROCESSING_VERSION},
                    [slide_id])
        save_reference(extract_to, reference)

        rate = ExtractionRate()

        def extract_progress(done: int, total: int) -> None:
            step(0.1 + 0.6 * done / max(total, 1), rate.message(done, total))

        step(0.08, "reading the slide and finding tissue")
        mags = ("20x", "10x") if meta.get("data_info", {}).get("has_10x") else ("20x",)
        extract_slide(slide_path, extract_to, encoder, magnifications=mags, slide_id=slide_id,
                      progress=extract_progress, stain=reference, cancel=token, mpp=mpp)
        features = Path(extract_to)
    features = Path(features)
    step(0.75, "reading features")
    bag, _ = read_slide_bag(features, slide_id, meta, checkpoint)
    step(0.8, f"explaining {bag.feats.shape[0]} patches")
    expl = explain_bag(model, bag, dev)
    if expl.risk_group is None:
        if expl.risk is not None:
            expl.risk_group = risk_group_from_run(checkpoint, str(meta.get("stage")), expl.risk)
        elif expl.probability is not None:
            expl.risk_group = "positive" if expl.probability >= 0.5 else "negative"
    step(1.0, "done")
    return Analysis(explanation=expl, meta=meta, slide_id=bag.case_id, features_path=features,
                    slide_path=Path(slide_path) if slide_path else None)
