"""Slide backends: tiffslide, OpenSlide and wsidicom behind one small interface.

A backend opens a file (or a DICOM folder) and returns a :class:`SlideSource`: the native levels
as array-likes of shape ``(h, w, 3)`` uint8 whose chunks are the file's tiles, the microns per
pixel and objective power in one vocabulary, the raw properties, and the associated images
(label, macro, thumbnail). :class:`~histokd_core.slide.reader.Slide` builds its lazy dask pyramid
from those arrays whatever the backend, so every format gets the same API.

Which backend reads what (``choose_backend``, overridable with ``backend=``):

- **wsidicom**: DICOM WSI, a folder of ``.dcm`` instances or one ``.dcm`` file of such a folder.
- **openslide**: formats tiffslide cannot read: MIRAX ``.mrxs``, Hamamatsu ``.vms``/``.vmu``,
  Sakura ``.svslide``, and TIFFs that OpenSlide identifies as Ventana (BIF, overlapping tiles) or
  Philips (sparse tiles); also any other file OpenSlide recognises that is not a TIFF.
- **tiffslide**: every other TIFF-based slide (Aperio SVS, generic/pyramidal TIFF, NDPI, SCN,
  OME-TIFF).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from histokd_core.errors import SlideError
from histokd_core.slide.tiles import TiledLevel, TileFile, read_indexed, tiled_rgb_page

#: Backend names accepted by ``open_slide(..., backend=...)``; "auto" picks one per file.
BACKENDS = ("tiffslide", "openslide", "wsidicom")

#: Suffixes whose files only OpenSlide reads (MIRAX, Hamamatsu VMS/VMU, Sakura).
OPENSLIDE_SUFFIXES = (".mrxs", ".vms", ".vmu", ".svslide")

#: OpenSlide vendors of TIFF files that tiffslide opens but does not assemble correctly.
OPENSLIDE_TIFF_VENDORS = ("ventana", "philips")

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")

_INSTALL_HINT = {
    "openslide": "pip install openslide-python openslide-bin",
    "wsidicom": "pip install wsidicom",
    "tiffslide": "pip install tiffslide",
}


@dataclass
class SlideSource:
    """What a backend hands to :class:`Slide`.

    Attributes
    ----------
    backend : ``"tiffslide"``, ``"openslide"`` or ``"wsidicom"``.
    arrays : one array-like per native level, finest first: ``shape (h, w, 3)`` (or the zarr
        layout tiffslide exposes), ``dtype`` uint8, ``chunks`` = the file's tile shape, and
        ``__getitem__`` with 2-D slices returning a numpy array. Only indexed tiles are decoded.
    vendor : scanner vendor as the backend reports it (``"aperio"``, ``"mirax"``, ``"dicom"``).
    mpp_x, mpp_y : microns per level-0 pixel from the metadata, or ``None``.
    objective_power : objective magnification from the metadata, or ``None``.
    properties : the backend's raw key/value metadata.
    associated : name (``"label"``, ``"macro"``, ``"thumbnail"``) -> reader of an ``(h, w, 3)``
        uint8 image.
    tiled : level index -> a faster reader of the same ``(h, w, 3)`` pixels as ``arrays[i]``
        (:class:`~histokd_core.slide.tiles.TiledLevel`: tiles decoded in parallel), for the
        levels that have one; region reads and viewers use it, the dask levels keep ``arrays``.
    close : releases the file handles.
    """

    backend: str
    arrays: list[Any]
    vendor: str | None
    mpp_x: float | None
    mpp_y: float | None
    objective_power: float | None
    properties: dict[str, Any]
    associated: dict[str, Callable[[], np.ndarray]] = field(default_factory=dict)
    tiled: dict[int, Any] = field(default_factory=dict)
    close: Callable[[], None] = lambda: None


def positive_float(value: Any) -> float | None:
    """``float(value)`` when it is a finite positive number, else ``None``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) and v > 0 else None


class RegionArray:
    """An ``(h, w, 3)`` uint8 array-like over ``read(x, y, w, h) -> (h, w, 3)`` in level pixels.

    dask's ``from_array`` slices it one chunk at a time, so only the tiles under a chunk are
    decoded. ``chunks`` is the backend's tile shape (used to align dask chunks to tiles).
    """

    ndim = 3
    dtype = np.dtype(np.uint8)

    def __init__(
        self,
        shape_hw: tuple[int, int],
        tile_hw: tuple[int, int],
        read: Callable[[int, int, int, int], np.ndarray],
    ) -> None:
        self.shape = (int(shape_hw[0]), int(shape_hw[1]), 3)
        self.chunks = (int(tile_hw[0]), int(tile_hw[1]), 3)
        self._read = read

    def __getitem__(self, key) -> np.ndarray:
        """``array[key]``: int, slice (positive steps) and ``...`` indices, as numpy gives them
        (:func:`~histokd_core.slide.tiles.read_indexed`: one read of the selection's box)."""
        return read_indexed(key, self.shape, self._read_box)

    def _read_box(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Pixels ``[y0:y1, x0:x1]`` (``(h, w, 3)``); an empty box reads nothing."""
        if y1 <= y0 or x1 <= x0:
            return np.zeros((y1 - y0, x1 - x0, 3), np.uint8)
        return self._read(x0, y0, x1 - x0, y1 - y0)


# -- choosing a backend ------------------------------------------------------------------------


def _head(path: Path, n: int = 132) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(n)
    except OSError:
        return b""


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True when ``path`` is a file with the DICOM preamble (``DICM`` at byte 128)."""
    return _head(Path(path))[128:132] == b"DICM"


def dicom_files(folder: Path) -> list[Path]:
    """The DICOM files directly inside ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and is_dicom_file(p))


def _openslide_vendor(path: Path) -> str | None:
    try:
        import openslide
    except ImportError:
        return None
    try:
        return openslide.OpenSlide.detect_format(str(path))
    except Exception:  # noqa: BLE001 - detection failure only means "not OpenSlide's"
        return None


def choose_backend(path: Path, backend: str = "auto") -> str:
    """The backend that reads ``path`` (see the module docstring), or ``backend`` if given.

    Raises :class:`SlideError` for an unknown backend name or a folder without DICOM files.
    """
    if backend != "auto":
        if backend not in BACKENDS:
            raise SlideError(
                f"{path}: unknown slide backend {backend!r}; expected one of "
                f"{', '.join(('auto',) + BACKENDS)}"
            )
        return backend
    if path.is_dir():
        return "wsidicom"
    if path.suffix.lower() == ".dcm" or is_dicom_file(path):
        return "wsidicom"
    if path.suffix.lower() in OPENSLIDE_SUFFIXES:
        return "openslide"
    if _head(path, 4) in _TIFF_MAGIC:
        return "openslide" if _openslide_vendor(path) in OPENSLIDE_TIFF_VENDORS else "tiffslide"
    if _openslide_vendor(path) is not None:
        return "openslide"
    return "tiffslide"  # the TIFF sniffing in reader.open_slide names what the file is


def _import(backend: str, path: Path):
    try:
        if backend == "openslide":
            import openslide as module
        elif backend == "wsidicom":
            import wsidicom as module
        else:
            import tiffslide as module
    except ImportError as exc:
        raise SlideError(
            f"{path}: reading this slide needs the {backend} package, which is not installed "
            f"({exc}); install it with `{_INSTALL_HINT[backend]}`"
        ) from exc
    return module


# -- tiffslide ---------------------------------------------------------------------------------


def _check_tile_offsets(path: Path, tiff) -> None:
    """Raise SlideError when a level's tile data lies beyond the end of the file (truncation)."""
    size = path.stat().st_size
    for series in tiff.series[:1]:
        for level_index, level in enumerate(series.levels):
            for page in level.pages:
                offsets = getattr(page, "dataoffsets", None)
                counts = getattr(page, "databytecounts", None)
                if not offsets or not counts:
                    continue
                counts = np.asarray(counts, dtype=np.int64)
                ends = (np.asarray(offsets, dtype=np.int64) + counts)[counts > 0]
                end = int(ends.max()) if ends.size else 0
                if end > size:
                    raise SlideError(
                        f"{path}: the file is truncated ({size} bytes, but level {level_index} "
                        f"needs data up to byte {end}); re-copy or re-download it"
                    )


def _tiled_levels(path: Path, ts, arrays: list[Any]) -> tuple[dict[int, TiledLevel], TileFile | None]:
    """:class:`TiledLevel` readers of the levels of ``ts`` that are single tiled 8-bit RGB pages
    of the same shape as tiffslide's array of that level, and the file they read.

    Slides tiffslide composes from several series, and levels of any other layout, get none
    (they are read through zarr). Returns ``({}, None)`` when no level qualifies.
    """
    props = ts.properties
    if props.get("tiffslide.series-composition"):
        return {}, None
    series = ts.ts_tifffile.series[int(props.get("tiffslide.series-index") or 0)]
    levels = list(series.levels)
    if len(levels) != len(arrays):
        return {}, None
    usable = [
        i for i, (level, array) in enumerate(zip(levels, arrays))
        if tiled_rgb_page(level) is not None and tuple(array.shape) == tuple(level.shape)
    ]
    if not usable:
        return {}, None
    tile_file = TileFile(path)
    try:
        return {i: TiledLevel(tile_file, levels[i]) for i in usable}, tile_file
    except BaseException:
        tile_file.close()
        raise


def open_tiffslide(path: Path) -> SlideSource:
    """Open a TIFF-based slide with tiffslide; levels are its zarr arrays (chunks = TIFF tiles),
    and tiled RGB levels also get a :class:`TiledLevel` (parallel tile decode) for region reads."""
    tiffslide = _import("tiffslide", path)
    ts = tiffslide.TiffSlide(path)
    try:
        _check_tile_offsets(path, ts.ts_tifffile)
        props = dict(ts.properties)
        group = ts.zarr_group
        arrays = [group[str(i)] for i in range(int(ts.level_count))]
        tiled, tile_file = _tiled_levels(path, ts, arrays)
        associated = {
            name: (lambda n=name: np.asarray(ts.associated_images[n].convert("RGB")))
            for name in ts.associated_images
        }
    except BaseException:
        ts.close()
        raise

    def close() -> None:
        ts.close()
        if tile_file is not None:
            tile_file.close()

    return SlideSource(
        backend="tiffslide",
        arrays=arrays,
        vendor=props.get("tiffslide.vendor"),
        mpp_x=positive_float(props.get("tiffslide.mpp-x")),
        mpp_y=positive_float(props.get("tiffslide.mpp-y")),
        objective_power=positive_float(props.get("tiffslide.objective-power")),
        properties=props,
        associated=associated,
        tiled=tiled,
        close=close,
    )


# -- OpenSlide ---------------------------------------------------------------------------------


def rgba_to_rgb(rgba: np.ndarray, background: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """Composite OpenSlide's premultiplied ``(h, w, 4)`` RGBA over ``background``.

    Opaque pixels are returned unchanged; transparent ones (outside scanned areas) get the
    slide's background colour, as OpenSlide's own viewers draw them.
    """
    rgb = rgba[..., :3]
    alpha = rgba[..., 3]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    a = alpha.astype(np.uint16)[..., None]
    bg = np.asarray(background, dtype=np.uint16)
    out = rgb.astype(np.uint16) + ((255 - a) * bg + 127) // 255
    return np.minimum(out, 255).astype(np.uint8)


def _hex_rgb(value: Any) -> tuple[int, int, int]:
    try:
        v = int(str(value), 16)
    except (TypeError, ValueError):
        return (255, 255, 255)
    return ((v >> 16) & 255, (v >> 8) & 255, v & 255)


def open_openslide(path: Path) -> SlideSource:
    """Open a slide with OpenSlide (the C library ships in the ``openslide-bin`` wheel).

    Each level is a :class:`RegionArray` reading through ``OpenSlide.read_region`` with the
    level's tile size as its chunk shape. OpenSlide takes level-0 coordinates; at a level whose
    downsample is not an integer (e.g. 2.0005 in some SVS files) a read that does not start at
    0 is resampled by a fraction of a pixel. Formats routed here (MIRAX, VMS, Philips, Ventana)
    have power-of-two downsamples, where reads are exact.
    """
    openslide = _import("openslide", path)
    try:
        osr = openslide.OpenSlide(str(path))
    except openslide.OpenSlideUnsupportedFormatError as exc:
        raise SlideError(
            f"{path}: OpenSlide does not recognise this file as a whole-slide image ({exc})"
        ) from exc
    props = dict(osr.properties)
    background = _hex_rgb(props.get("openslide.background-color", "FFFFFF"))

    def level_array(level: int) -> RegionArray:
        w, h = osr.level_dimensions[level]
        ds = float(osr.level_downsamples[level])
        tw = int(props.get(f"openslide.level[{level}].tile-width", 0) or 0) or 256
        th = int(props.get(f"openslide.level[{level}].tile-height", 0) or 0) or 256

        def read(x: int, y: int, rw: int, rh: int) -> np.ndarray:
            try:
                region = osr.read_region((round(x * ds), round(y * ds)), level, (rw, rh))
            except openslide.OpenSlideError as exc:
                raise SlideError(
                    f"{path}: OpenSlide cannot decode level {level} at ({x}, {y}) "
                    f"({exc}); the file may be corrupt or truncated"
                ) from exc
            return rgba_to_rgb(np.asarray(region), background)

        return RegionArray((h, w), (min(th, h), min(tw, w)), read)

    def associated(name: str) -> Callable[[], np.ndarray]:
        return lambda: np.asarray(osr.associated_images[name].convert("RGB"))

    return SlideSource(
        backend="openslide",
        arrays=[level_array(i) for i in range(osr.level_count)],
        vendor=props.get("openslide.vendor"),
        mpp_x=positive_float(props.get("openslide.mpp-x")),
        mpp_y=positive_float(props.get("openslide.mpp-y")),
        objective_power=positive_float(props.get("openslide.objective-power")),
        properties=props,
        associated={name: associated(name) for name in osr.associated_images},
        close=osr.close,
    )


# -- wsidicom ----------------------------------------------------------------------------------


def dicom_folder(path: Path) -> Path:
    """The folder holding a DICOM WSI: ``path`` itself, or the folder of a ``.dcm`` file."""
    folder = path if path.is_dir() else path.parent
    if not dicom_files(folder):
        raise SlideError(
            f"{path}: no DICOM files found (expected a folder of DICOM WSI instances, .dcm, "
            "or one .dcm file inside such a folder)"
        )
    return folder


def open_wsidicom(path: Path) -> SlideSource:
    """Open a DICOM WSI (a folder of instances, or one ``.dcm`` of it) with wsidicom.

    Levels are the pyramid's levels (finest first) read by ``WsiDicom.read_region`` one tile
    block at a time; mpp comes from the level-0 pixel spacing (mm -> um).
    """
    wsidicom = _import("wsidicom", path)
    folder = dicom_folder(path)
    try:
        wsi = wsidicom.WsiDicom.open(folder)
    except Exception as exc:  # noqa: BLE001 - pydicom/wsidicom raise many types; name the file
        raise SlideError(
            f"{path}: cannot be read as a DICOM whole-slide image ({type(exc).__name__}: {exc})"
        ) from exc
    try:
        levels = list(wsi.levels)
        if not levels:
            raise SlideError(f"{path}: the DICOM files hold no WSI pyramid level")
        spacing = levels[0].pixel_spacing  # mm per pixel
        mpp_x = positive_float(float(spacing.width) * 1000.0) if spacing else None
        mpp_y = positive_float(float(spacing.height) * 1000.0) if spacing else None
        objective = None
        try:
            objective = positive_float(wsi.metadata.optical_paths[0].objective.objective_power)
        except (AttributeError, IndexError, TypeError):
            objective = None
        properties: dict[str, Any] = {"dicom.folder": str(folder)}
        try:
            equipment = wsi.metadata.equipment
            properties["dicom.manufacturer"] = ", ".join(equipment.manufacturer or []) or None
            properties["dicom.model"] = ", ".join(equipment.model_name or []) or None
        except (AttributeError, TypeError):
            pass
    except BaseException:
        wsi.close()
        raise

    def level_array(level) -> RegionArray:
        number = level.level  # wsidicom addresses levels by their power-of-two number

        def read(x: int, y: int, rw: int, rh: int) -> np.ndarray:
            try:
                image = wsi.read_region((x, y), number, (rw, rh))
            except Exception as exc:  # noqa: BLE001 - decode errors of any codec
                raise SlideError(
                    f"{path}: cannot decode DICOM level {number} at ({x}, {y}) "
                    f"({type(exc).__name__}: {exc})"
                ) from exc
            return np.asarray(image.convert("RGB"))

        size, tile = level.size, level.tile_size
        return RegionArray(
            (size.height, size.width),
            (min(tile.height, size.height), min(tile.width, size.width)),
            read,
        )

    associated: dict[str, Callable[[], np.ndarray]] = {}
    if wsi.labels:
        associated["label"] = lambda: np.asarray(wsi.read_label().convert("RGB"))
    if wsi.overviews:
        associated["macro"] = lambda: np.asarray(wsi.read_overview().convert("RGB"))
    return SlideSource(
        backend="wsidicom",
        arrays=[level_array(level) for level in levels],
        vendor="dicom",
        mpp_x=mpp_x,
        mpp_y=mpp_y,
        objective_power=objective,
        properties=properties,
        associated=associated,
        close=wsi.close,
    )


OPENERS: dict[str, Callable[[Path], SlideSource]] = {
    "tiffslide": open_tiffslide,
    "openslide": open_openslide,
    "wsidicom": open_wsidicom,
}
