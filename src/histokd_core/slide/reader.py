"""Open whole-slide images through a backend and expose them as lazy dask pyramids.

``open_slide`` picks a backend per file (:mod:`histokd_core.slide.backends`: tiffslide, OpenSlide
or wsidicom) and turns every failure (missing, empty, truncated, corrupt or unreadable file) into
a :class:`~histokd_core.errors.SlideError` naming the file. A slide without microns-per-pixel
still opens for viewing (pixel units, :class:`MissingMppWarning`, ``metadata()["mpp_missing"]``);
operations that need physical units call :meth:`Slide.require_mpp`.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from histokd_core.errors import MissingMppError, SlideError
from histokd_core.slide import backends, pyramid
from histokd_core.slide.backends import SlideSource, positive_float
from histokd_core.slide.tiles import TiledLevel


_MAGIC = {
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"GIF8": "a GIF image",
    b"PK\x03\x04": "a ZIP archive",
    b"%PDF": "a PDF document",
    b"BM": "a BMP image",
}
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


class MissingMppWarning(UserWarning):
    """The slide has no microns-per-pixel metadata; it is shown in pixel units."""


def looks_like_tiff(path: str | os.PathLike) -> bool:
    """True when ``path`` is a file whose first bytes are a TIFF or BigTIFF header."""
    try:
        with open(path, "rb") as fh:
            return fh.read(4) in _TIFF_MAGIC
    except OSError:
        return False


def _sniff(path: Path) -> None:
    """Raise SlideError unless ``path`` is a non-empty file starting with a TIFF header (tiffslide)."""
    if not path.exists():
        raise SlideError(f"{path}: no such file")
    if not path.is_file():
        raise SlideError(f"{path}: not a file (expected a whole-slide image such as .svs or .tif)")
    size = path.stat().st_size
    if size == 0:
        raise SlideError(f"{path}: the file is empty (0 bytes); expected a whole-slide image")
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head[:4] in _TIFF_MAGIC:
        if size < 16:
            raise SlideError(f"{path}: truncated TIFF ({size} bytes)")
        return
    for magic, what in _MAGIC.items():
        if head.startswith(magic):
            raise SlideError(
                f"{path}: this is {what}, not a whole-slide image (expected a TIFF-based slide "
                "such as Aperio .svs, pyramidal .tif, .ndpi or .scn)"
            )
    raise SlideError(
        f"{path}: not a TIFF-based whole-slide image (the file does not start with a TIFF header)"
    )


class Slide:
    """A whole-slide image with lazy dask levels. Create it with :func:`open_slide`.

    Attributes
    ----------
    path : the file (or, for DICOM WSI, the folder of instances).
    backend : the library that reads it: ``"tiffslide"``, ``"openslide"`` or ``"wsidicom"``.
    levels : ``(h, w, 3)`` uint8 dask arrays, finest first. The first ``native_level_count``
        are the file's own levels (chunks = blocks of whole tiles); the rest are lazy 2x
        box-mean overviews.
    display_levels : the same levels as napari reads them: native RGB levels as
        :class:`~histokd_core.slide.pyramid.DisplayLevel` (sliced without dask, tiles decoded in
        parallel), the others as in ``levels``.
    level_dimensions : ``(width, height)`` px of each entry of ``levels``.
    level_downsamples : level-0 px per level px of each entry of ``levels``.
    mpp : microns per level-0 pixel, or ``None`` when unknown.
    magnification : objective power; from the metadata, else estimated as ``10 / mpp``.
    associated_images : names of the label/macro/thumbnail images the file holds.
    """

    def __init__(self, path: Path, source: SlideSource, mpp: float | None = None) -> None:
        self.path = path
        self._source = source
        self.backend: str = source.backend
        self.properties: dict[str, Any] = source.properties
        self.vendor: str | None = source.vendor
        arrays = source.arrays
        self.native_level_count: int = len(arrays)
        # dask levels read through the tiled reader where there is one (chunks decoded in parallel)
        native = [pyramid.as_rgb_level(source.tiled.get(i, a)) for i, a in enumerate(arrays)]
        # RGB levels stored as (h, w, 3) are read directly (one call decodes all the tiles of a
        # region in parallel: the backend's tile reader where it has one, else the array itself);
        # other layouts and lazy overview levels go through dask
        self._direct = {i: a for i, a in enumerate(arrays) if a.ndim == 3 and a.shape[-1] == 3}
        self._direct.update(source.tiled)
        for i, level in enumerate(native):
            if level.dtype != np.uint8:
                raise SlideError(
                    f"{path}: level {i} has pixel type {level.dtype}; "
                    "expected 8-bit RGB brightfield"
                )
        self.levels: list[da.Array] = pyramid.with_overview_levels(native)
        #: what viewers read: native RGB levels sliced without dask (see pyramid.DisplayLevel)
        self.display_levels: list = pyramid.display_levels(self.levels, self._direct)
        self.level_dimensions: list[tuple[int, int]] = [
            (int(a.shape[1]), int(a.shape[0])) for a in self.levels
        ]
        self.dimensions: tuple[int, int] = self.level_dimensions[0]
        self.level_downsamples: list[float] = [
            pyramid.level_downsample(self.dimensions, wh) for wh in self.level_dimensions
        ]
        self.tile_size: tuple[int, int] = (int(native[0].chunksize[1]), int(native[0].chunksize[0]))

        file_mpp, file_mpp_y = source.mpp_x, source.mpp_y
        if mpp is not None:
            if positive_float(mpp) is None:
                raise SlideError(
                    f"{path}: mpp must be a positive number of microns per pixel, got {mpp!r}"
                )
            self.mpp: float | None = float(mpp)
            self.mpp_source: str | None = "user"
        elif file_mpp is not None:
            self.mpp, self.mpp_source = file_mpp, "metadata"
        else:
            self.mpp, self.mpp_source = None, None
            message = (
                f"{path.name}: no microns-per-pixel (mpp) in the slide metadata; showing it in "
                "pixel units. Tiling and feature extraction need it: the 'slide um/px' field of the "
                "napari docks, --mpp on the command line, or open_slide(path, mpp=...)."
            )
            warnings.warn(message, MissingMppWarning, stacklevel=3)
        self.mpp_y: float | None = float(mpp) if mpp is not None else (file_mpp_y or file_mpp)

        objective = source.objective_power
        self.magnification_estimated = objective is None and self.mpp is not None
        self.magnification: float | None = objective if objective is not None else (
            round(10.0 / self.mpp, 2) if self.mpp is not None else None
        )

    @property
    def associated_images(self) -> list[str]:
        """Names of the associated images (``"label"``, ``"macro"``, ``"thumbnail"``) present."""
        return sorted(self._source.associated)

    def associated_image(self, name: str) -> np.ndarray:
        """The associated image ``name`` as ``(h, w, 3)`` uint8.

        The label often carries patient identifiers: callers showing it to people must respect
        the user's de-identification setting (the napari plugin never shows it when it is on).
        """
        reader = self._source.associated.get(name)
        if reader is None:
            have = ", ".join(self.associated_images) or "none"
            raise SlideError(
                f"{self.path}: no associated image {name!r} in this slide (it has: {have})"
            )
        try:
            return reader()
        except SlideError:
            raise
        except Exception as exc:  # noqa: BLE001 - codec errors of any backend; name the file
            raise SlideError(
                f"{self.path}: the associated image {name!r} cannot be decoded "
                f"({type(exc).__name__}: {exc})"
            ) from exc

    # -- openslide-like API -------------------------------------------------------------
    @property
    def level_count(self) -> int:
        """Number of entries in ``levels`` (native plus lazy overview levels)."""
        return len(self.levels)

    @property
    def mpp_missing(self) -> bool:
        return self.mpp is None

    def best_level_for_downsample(self, downsample: float) -> int:
        """The coarsest level whose downsample does not exceed ``downsample``."""
        return pyramid.best_level_for_downsample(self.level_downsamples, downsample)

    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        """Read ``size = (w, h)`` px of ``level`` whose top-left is level-0 ``location = (x, y)``.

        Same convention as openslide/tiffslide (location divided by the level downsample,
        truncated); pixels outside the slide are 0. Returns ``(h, w, 3)`` uint8. Native levels
        are read directly (tiled TIFF levels tile by tile on several threads, see
        :mod:`~histokd_core.slide.tiles`; other native levels from the backend's array), lazy
        overview levels through their dask graph.
        """
        if not 0 <= level < self.level_count:
            raise SlideError(
                f"{self.path}: level {level} does not exist (0..{self.level_count - 1})"
            )
        w, h = (int(v) for v in size)
        ds = self.level_downsamples[level]
        x0, y0 = int(int(location[0]) / ds), int(int(location[1]) / ds)
        lw, lh = self.level_dimensions[level]
        source = self._direct.get(level)
        inside = 0 <= x0 and 0 <= y0 and x0 + w <= lw and y0 + h <= lh and w > 0 and h > 0
        if inside and isinstance(source, TiledLevel):  # decoded straight into a new array
            return source.read(y0, y0 + h, x0, x0 + w)
        out = np.zeros((h, w, 3), dtype=np.uint8)
        cx0, cy0 = max(x0, 0), max(y0, 0)
        cx1, cy1 = min(x0 + w, lw), min(y0 + h, lh)
        if cx1 > cx0 and cy1 > cy0:
            if source is not None:
                block = source[cy0:cy1, cx0:cx1]
            else:
                block = self.levels[level][cy0:cy1, cx0:cx1].compute()
            out[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = block
        return out

    def thumbnail(self, max_size: int = 1024) -> np.ndarray:
        """An ``(h, w, 3)`` uint8 overview whose longer side is at most ``max_size`` px.

        Reads the coarsest level that is still at least ``max_size`` px (never level 0 of a
        pyramid), then resizes with anti-aliasing.
        """
        from skimage.transform import resize

        idx = 0
        for i, (w, h) in enumerate(self.level_dimensions):
            if max(w, h) >= max_size:
                idx = i
        image = self.levels[idx].compute()
        scale = max_size / max(image.shape[:2])
        if scale >= 1:
            return image
        shape = (max(1, round(image.shape[0] * scale)), max(1, round(image.shape[1] * scale)), 3)
        small = resize(image, shape, anti_aliasing=True, preserve_range=True)
        return (small + 0.5).astype(np.uint8)

    def require_mpp(self) -> float:
        """Microns per pixel, or :class:`MissingMppError` explaining how to provide it."""
        if self.mpp is None:
            raise MissingMppError(
                f"{self.path}: the slide has no microns-per-pixel (mpp) metadata, so patches "
                "cannot be sized in microns. Give it where the slide enters (0.25 um/px = 40x, "
                "0.5 um/px = 20x): the 'slide um/px' field of the napari Analyse or Patch-grid "
                f"dock; `histokd extract {self.path.name} --mpp 0.25 ...` on the command line; "
                "or open_slide(path, mpp=0.25) / extract_slide(..., mpp=0.25) / "
                "analyse_slide(..., mpp=0.25) in Python."
            )
        return self.mpp

    def metadata(self) -> dict[str, Any]:
        """JSON-serialisable description (used as napari ``layer.metadata``)."""
        return {
            "path": str(self.path),
            "backend": self.backend,
            "vendor": self.vendor,
            "associated_images": self.associated_images,
            "dimensions": list(self.dimensions),
            "mpp": self.mpp,
            "mpp_y": self.mpp_y,
            "mpp_source": self.mpp_source,
            "mpp_missing": self.mpp is None,
            "magnification": self.magnification,
            "magnification_estimated": self.magnification_estimated,
            "native_level_count": self.native_level_count,
            "level_dimensions": [list(d) for d in self.level_dimensions],
            "level_downsamples": list(self.level_downsamples),
            "tile_size": list(self.tile_size),
            "properties": {
                k: v
                for k, v in self.properties.items()
                if v is None or isinstance(v, (str, int, float, bool))
            },
        }

    def close(self) -> None:
        self._source.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Slide({self.path.name!r}, dimensions={self.dimensions}, levels={self.level_count} "
            f"({self.native_level_count} native), mpp={self.mpp}, backend={self.backend!r})"
        )


def _probe(slide: Slide) -> None:
    """Decode the first and the last pixel of every native level (one tile each).

    Catches corrupt or undecodable tile data (e.g. a missing codec) at open time. Levels read
    directly are probed through that reader (the same codec call, without a dask graph: opening
    a slide then never starts dask), the others through their dask level.
    """
    for i in range(slide.native_level_count):
        direct = slide._direct.get(i)
        if direct is not None:
            direct[:1, :1]
            direct[-1:, -1:]
        else:
            slide.levels[i][:1, :1].compute()
            slide.levels[i][-1:, -1:].compute()


def _check_path(path: Path, backend: str) -> None:
    """Raise SlideError for a missing path, or one of the wrong kind for ``backend``."""
    if backend == "tiffslide":
        _sniff(path)
    elif not path.exists():
        raise SlideError(f"{path}: no such file or folder")
    elif backend == "openslide" and not path.is_file():
        raise SlideError(f"{path}: not a file (OpenSlide reads a slide file such as .mrxs)")


def open_slide(
    path: str | os.PathLike, mpp: float | None = None, backend: str = "auto"
) -> Slide:
    """Open a whole-slide image: any format tiffslide, OpenSlide or wsidicom reads.

    Parameters
    ----------
    path : slide file (SVS, TIFF, NDPI, SCN, MRXS, VMS, ...), or a DICOM WSI folder or one of
        its ``.dcm`` files.
    mpp : microns per level-0 pixel; overrides (or supplies missing) metadata.
    backend : ``"auto"`` (see :func:`~histokd_core.slide.backends.choose_backend`) or one of
        ``"tiffslide"``, ``"openslide"``, ``"wsidicom"`` to force it.

    Raises
    ------
    SlideError
        The file is missing, empty, truncated, corrupt or not a slide (the message names it).
    """
    path = Path(path)
    name = backends.choose_backend(path, backend)
    _check_path(path, name)
    if name == "wsidicom":  # one slide = its folder, whichever .dcm was given (one slide id)
        path = backends.dicom_folder(path)
    source = None
    try:
        source = backends.OPENERS[name](path)
        slide = Slide(path, source, mpp=mpp)
        _probe(slide)
    except SlideError:
        if source is not None:
            source.close()
        raise
    except Exception as exc:  # tifffile/openslide/wsidicom/codecs raise many types; name the file
        if source is not None:
            try:
                source.close()
            except Exception:  # noqa: BLE001 - the original error matters, not this one
                pass
        raise SlideError(
            f"{path}: cannot be read as a whole-slide image by {name} "
            f"({type(exc).__name__}: {exc}); the file may be corrupt, truncated or in an "
            "unsupported format"
        ) from exc
    return slide
