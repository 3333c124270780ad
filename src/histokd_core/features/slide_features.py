"""The features of one slide, whatever wrote them: :class:`SlideFeatures`, and slide/magnification names.

Both the zarr feature store (:mod:`histokd_core.features.store`) and the readers of other tools'
files (:mod:`histokd_core.features.importers`) return a :class:`SlideFeatures`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from histokd_core.errors import DataError

#: Magnification name -> target microns per pixel (20x = 0.5 um/px).
MAGNIFICATIONS: dict[str, float] = {"40x": 0.25, "20x": 0.5, "10x": 1.0, "5x": 2.0}
#: Extensions removed from a slide file name to form its slide id.
SLIDE_EXTENSIONS = (
    ".svs", ".tif", ".tiff", ".ndpi", ".scn", ".mrxs", ".vms", ".vmu", ".bif", ".svslide", ".qptiff", ".dcm",
)

def mag_to_mpp(mag: str) -> float:
    """Target microns per pixel of a magnification name such as ``"20x"`` (``10 / 20``)."""
    if mag in MAGNIFICATIONS:
        return MAGNIFICATIONS[mag]
    try:
        power = float(str(mag).lower().removesuffix("x"))
    except ValueError:
        power = 0.0
    if power <= 0:
        raise DataError(f"magnification {mag!r} not understood; expected e.g. '20x' or '10x'")
    return 10.0 / power


def slide_id_of(path_or_name: str | os.PathLike) -> str:
    """Slide id of a slide file: its name without a known slide extension.

    ``TCGA-XX-0000-01Z-00-DX1.<uuid>.svs`` -> ``TCGA-XX-0000-01Z-00-DX1.<uuid>``.
    """
    name = Path(path_or_name).name
    for ext in SLIDE_EXTENSIONS + (".zarr", ".h5", ".pt"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def check_finite(
    feats: np.ndarray, where: str, coords: Callable[[], np.ndarray] | None = None
) -> None:
    """Raise :class:`DataError` when ``feats`` ``(n, d)`` holds NaN or +-inf.

    The message names ``where`` (file and slide), how many rows are affected and the first of
    them with its level-0 ``(x, y)`` when ``coords()`` can say.
    """
    feats = np.asarray(feats)
    if not np.issubdtype(feats.dtype, np.floating):
        return
    finite = np.isfinite(feats)
    if finite.all():
        return
    bad_rows = np.flatnonzero(~finite.reshape(len(feats), -1).all(axis=1))
    first = int(bad_rows[0])
    kinds = sorted({"NaN" if np.isnan(v) else "inf" for v in feats[first][~finite[first]]})
    position = ""
    if coords is not None:
        try:
            xy = np.asarray(coords())[first]
            position = f" at level-0 (x, y) = ({int(xy[0])}, {int(xy[1])})"
        except (DataError, IndexError, ValueError, TypeError):
            position = ""
    raise DataError(
        f"{where}: {len(bad_rows)} of {len(feats)} patch feature row(s) hold non-finite values "
        f"({'/'.join(kinds)}), first in row {first}{position}; features must be finite: "
        "re-extract this slide or remove it from the cohort"
    )


class SlideFeatures:
    """Features of one slide at one or more magnifications.

    Attributes
    ----------
    slide_id : the slide id.
    source : where the features were read (zarr group, ``.h5`` or ``.pt`` file).
    magnifications : available magnification names, finest first (e.g. ``("20x", "10x")``).
    attrs : slide attributes (``encoder_id``, ``weights_hash``, ``mpp``, ``slide_path``, ...) plus
        ``patch_size_level0`` of the finest magnification.
    """

    def __init__(
        self,
        slide_id: str,
        source: Path,
        attrs: dict[str, Any],
        mag_attrs: dict[str, dict[str, Any]],
        loader: Callable[[str, str], np.ndarray],
    ) -> None:
        self.slide_id = slide_id
        self.source = source
        self._mag_attrs = mag_attrs
        self._loader = loader
        self.magnifications: tuple[str, ...] = tuple(sorted(mag_attrs, key=mag_to_mpp))
        self.attrs = dict(attrs)
        if self.magnifications:
            self.attrs.setdefault("patch_size_level0", mag_attrs[self.magnifications[0]].get("patch_size_level0"))

    def _mag(self, mag: str | None) -> str:
        if mag is None:
            if not self.magnifications:
                raise DataError(f"{self.source}: no magnification stored for slide {self.slide_id}")
            return self.magnifications[0]
        if mag not in self._mag_attrs:
            raise DataError(
                f"{self.source}: slide {self.slide_id} has no features at {mag} "
                f"(available: {', '.join(self.magnifications) or 'none'})"
            )
        return mag

    def feats(self, mag: str | None = None) -> np.ndarray:
        """``(n_patches, d)`` float32 features at ``mag`` (default: the finest).

        Every reader (zarr store, ``.h5``/``.pt`` bags, in-memory features) passes through here,
        so this is where non-finite values are refused (:func:`check_finite`).
        """
        mag = self._mag(mag)
        feats = self._loader(mag, "feats")
        check_finite(feats, f"{self.source}: slide {self.slide_id} at {mag}",
                     lambda: self._loader(mag, "coords"))
        return feats

    def coords(self, mag: str | None = None) -> np.ndarray:
        """``(n_patches, 2)`` int64 level-0 top-left ``(x, y)`` at ``mag`` (default: the finest)."""
        return self._loader(self._mag(mag), "coords")

    def mag_attrs(self, mag: str | None = None) -> dict[str, Any]:
        """Attributes of one magnification (``patch_size_level0``, ``target_mpp``, ...)."""
        return dict(self._mag_attrs[self._mag(mag)])

    def patch_size_level0(self, mag: str | None = None) -> int | None:
        """Patch side in level-0 px at ``mag`` (``None`` when the source does not say)."""
        value = self._mag_attrs[self._mag(mag)].get("patch_size_level0")
        return None if value is None else int(value)

    @property
    def dim(self) -> int:
        """Feature dimension ``d``."""
        return int(self.feats().shape[1])

    def __repr__(self) -> str:
        return f"SlideFeatures({self.slide_id!r}, {list(self.magnifications)}, source={str(self.source)!r})"
