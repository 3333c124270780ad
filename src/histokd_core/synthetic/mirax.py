"""Write small MIRAX (3DHistech ``.mrxs``) slides from an RGB array, for tests and examples.

No MIRAX file is small and freely redistributable, so the tests make one: this writer produces
the subset of the format that OpenSlide's MIRAX driver documents and reads (``Slidedat.ini``
key file, ``Index.dat`` hierarchical/non-hierarchical records, ``DataNNNN.dat`` image blobs):

- one camera image per position (``CameraImageDivisionsPerSide = 1``), no overlap and no
  position buffer, so camera image ``(i, j)`` sits at level-0 pixel ``(i * w, j * h)``;
- zoom level ``k`` stores one image of ``w x h`` px per ``2^k x 2^k`` camera images
  (``IMAGE_CONCAT_FACTOR`` 0 then 1), a 2x2 box mean of level ``k - 1``;
- images are JPEG (what scanners write) or PNG (lossless, for pixel-exact tests);
- optional associated images in the ``Scan data layer``: macro (``ScanDataLayer_SlideThumbnail``)
  and label (``ScanDataLayer_SlideBarcode``), JPEG as OpenSlide requires.

Layout on disk: ``<name>.mrxs`` and a folder ``<name>/`` holding ``Slidedat.ini``,
``Index.dat`` and ``Data0000.dat``.
"""

from __future__ import annotations

import io
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

INDEX_VERSION = b"01.02"


@dataclass(frozen=True)
class MiraxSlide:
    """What :func:`write_mirax` wrote: the ``.mrxs`` path, level sizes ``(w, h)`` and the images.

    ``level_images[k]`` is the ``(h_k, w_k, 3)`` uint8 content of level ``k`` as stored
    (before any JPEG loss); ``encoded[k]`` maps camera position ``(i, j)`` to the bytes stored.
    """

    path: Path
    level_dimensions: tuple[tuple[int, int], ...]
    level_images: tuple[np.ndarray, ...]
    encoded: tuple[dict[tuple[int, int], bytes], ...]
    mpp: float
    image_format: str


def _encode(image: np.ndarray, image_format: str, quality: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    if image_format == "JPEG":
        Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    else:
        Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _halve(image: np.ndarray) -> np.ndarray:
    """2x2 box mean (rounded) of an ``(h, w, 3)`` uint8 image with even sides."""
    h, w = image.shape[0] // 2, image.shape[1] // 2
    b = image[: 2 * h, : 2 * w].reshape(h, 2, w, 2, 3).astype(np.uint16)
    return ((b.sum(axis=(1, 3)) + 2) // 4).astype(np.uint8)


def write_mirax(
    path: str | Path,
    image: np.ndarray,
    mpp: float = 0.25,
    *,
    camera_image: tuple[int, int] = (256, 256),
    n_levels: int = 3,
    image_format: str = "JPEG",
    quality: int = 90,
    objective: int = 20,
    label: np.ndarray | None = None,
    macro: np.ndarray | None = None,
) -> MiraxSlide:
    """Write ``image`` (``(h, w, 3)`` uint8) as a MIRAX slide at ``path`` (``*.mrxs``).

    Parameters
    ----------
    image : level 0; its sides must be multiples of ``camera_image`` ``(w, h)`` px (MIRAX
        slides are whole camera images). Images at the right/bottom edge of a coarser level
        that reach past the slide are padded with white (the fill colour).
    mpp : microns per level-0 pixel (``MICROMETER_PER_PIXEL_X/Y``).
    n_levels : zoom levels; level ``k`` is ``2^k`` times smaller.
    image_format : ``"JPEG"`` or ``"PNG"``.
    label, macro : optional associated images ``(h, w, 3)`` uint8 (stored as JPEG).
    """
    path = Path(path)
    if path.suffix != ".mrxs":
        raise ValueError(f"{path}: a MIRAX slide file must end in .mrxs")
    if image_format not in ("JPEG", "PNG"):
        raise ValueError(f"image_format must be 'JPEG' or 'PNG', got {image_format!r}")
    image = np.ascontiguousarray(image, dtype=np.uint8)
    cw, ch = camera_image
    h, w = image.shape[:2]
    if image.ndim != 3 or image.shape[2] != 3 or w % cw or h % ch:
        raise ValueError(
            f"image must be (h, w, 3) with w a multiple of {cw} and h of {ch} px, "
            f"got {image.shape}"
        )
    nx, ny = w // cw, h // ch
    folder = path.with_suffix("")
    folder.mkdir(parents=True, exist_ok=True)
    slide_id = uuid.uuid4().hex

    data = bytearray()
    levels: list[np.ndarray] = [image]
    for _ in range(1, n_levels):
        levels.append(_halve(levels[-1]))
    level_records: list[list[tuple[int, int, int]]] = []  # (image_index, offset, length)
    encoded: list[dict[tuple[int, int], bytes]] = []
    for k, level in enumerate(levels):
        concat = 2**k
        records, blobs = [], {}
        padded = np.full((-(-ny // concat) * ch, -(-nx // concat) * cw, 3), 255, np.uint8)
        padded[: level.shape[0], : level.shape[1]] = level
        for j in range(0, ny, concat):
            for i in range(0, nx, concat):
                y0, x0 = (j // concat) * ch, (i // concat) * cw
                blob = _encode(padded[y0 : y0 + ch, x0 : x0 + cw], image_format, quality)
                records.append((j * nx + i, len(data), len(blob)))
                blobs[(i, j)] = blob
                data += blob
        level_records.append(records)
        encoded.append(blobs)
    associated: list[tuple[str, str, str, int, int]] = []  # (value, section, key, offset, length)
    for value, key, picture in (
        ("ScanDataLayer_SlideThumbnail", "THUMBNAIL_IMAGE_TYPE", macro),
        ("ScanDataLayer_SlideBarcode", "BARCODE_IMAGE_TYPE", label),
    ):
        if picture is not None:
            blob = _encode(np.ascontiguousarray(picture, dtype=np.uint8), "JPEG", 95)
            section = f"NONHIER_0_VAL_{len(associated)}_SECTION"
            associated.append((value, section, key, len(data), len(blob)))
            data += blob
    (folder / "Data0000.dat").write_bytes(bytes(data))
    (folder / "Index.dat").write_bytes(_index_file(slide_id, level_records, associated))
    (folder / "Slidedat.ini").write_text(
        _slidedat(slide_id, nx, ny, levels, camera_image, mpp, image_format, objective, associated)
    )
    path.write_bytes(b"MIRAX slide written by histokd_core.synthetic.mirax\r\n")
    return MiraxSlide(
        path=path,
        level_dimensions=tuple((lv.shape[1], lv.shape[0]) for lv in levels),
        level_images=tuple(levels),
        encoded=tuple(encoded),
        mpp=float(mpp),
        image_format=image_format,
    )


def _slidedat(slide_id, nx, ny, levels, camera_image, mpp, image_format, objective, associated):
    cw, ch = camera_image
    lines = [
        "[GENERAL]",
        f"SLIDE_ID = {slide_id}",
        f"IMAGENUMBER_X = {nx}",
        f"IMAGENUMBER_Y = {ny}",
        f"OBJECTIVE_MAGNIFICATION = {objective}",
        "CameraImageDivisionsPerSide = 1",
        "",
        "[HIERARCHICAL]",
        "HIER_COUNT = 1",
        "HIER_0_NAME = Slide zoom level",
        f"HIER_0_COUNT = {len(levels)}",
    ]
    lines += [f"HIER_0_VAL_{k}_SECTION = LAYER_0_LEVEL_{k}_SECTION" for k in range(len(levels))]
    if associated:
        lines += [
            "NONHIER_COUNT = 1",
            "NONHIER_0_NAME = Scan data layer",
            f"NONHIER_0_COUNT = {len(associated)}",
        ]
        for n, (value, section, _key, _o, _l) in enumerate(associated):
            lines += [f"NONHIER_0_VAL_{n} = {value}", f"NONHIER_0_VAL_{n}_SECTION = {section}"]
    else:
        lines.append("NONHIER_COUNT = 0")
    lines += ["INDEXFILE = Index.dat", "", "[DATAFILE]", "FILE_COUNT = 1", "FILE_0 = Data0000.dat"]
    for k in range(len(levels)):
        lines += [
            "",
            f"[LAYER_0_LEVEL_{k}_SECTION]",
            "OVERLAP_X = 0",
            "OVERLAP_Y = 0",
            f"MICROMETER_PER_PIXEL_X = {mpp * 2**k!r}",
            f"MICROMETER_PER_PIXEL_Y = {mpp * 2**k!r}",
            f"IMAGE_FORMAT = {image_format}",
            "IMAGE_FILL_COLOR_BGR = 16777215",
            f"DIGITIZER_WIDTH = {cw}",
            f"DIGITIZER_HEIGHT = {ch}",
            f"IMAGE_CONCAT_FACTOR = {0 if k == 0 else 1}",
        ]
    for _value, section, key, _o, _l in associated:
        lines += ["", f"[{section}]", f"{key} = JPEG"]
    return "\n".join(lines) + "\n"


def _index_file(slide_id: str, level_records, associated) -> bytes:
    """``Index.dat``: version + slide id, then pointers to one data page per zoom level and
    one record per associated image (all integers little-endian int32)."""
    i32 = struct.Struct("<i").pack
    header = INDEX_VERSION + slide_id.encode("ascii")
    hier_table = len(header) + 8
    nonhier_table = hier_table + 4 * len(level_records)
    cursor = nonhier_table + 4 * len(associated)
    level_heads, body = [], bytearray()
    for records in level_records:
        head = cursor + len(body)
        level_heads.append(head)
        page = head + 8
        body += i32(0) + i32(page)  # list head: 0, pointer to the first page
        body += i32(len(records)) + i32(0)  # page: item count, next page (none)
        for image_index, offset, length in records:
            body += i32(image_index) + i32(offset) + i32(length) + i32(0)  # file 0
    record_heads = []
    for _value, _section, _key, offset, length in associated:
        head = cursor + len(body)
        record_heads.append(head)
        body += i32(0) + i32(head + 8)
        body += i32(1) + i32(0) + i32(0) + i32(0) + i32(offset) + i32(length) + i32(0)
    out = bytearray(header)
    out += i32(hier_table) + i32(nonhier_table)
    out += b"".join(i32(p) for p in level_heads)
    out += b"".join(i32(p) for p in record_heads)
    out += body
    return bytes(out)
