"""Heatmaps as QuPath *detection* objects, and QuPath objects read back onto the slide.

QuPath (>= 0.4) reads a GeoJSON FeatureCollection (or a bare list of Features) whose features
carry ``properties.objectType`` (``"annotation"``, ``"detection"``, ``"tile"``, ``"cell"``),
``properties.classification = {"name": ..., "color": [r, g, b]}`` and ``properties.measurements``
as a map ``name -> number``. Coordinates are level-0 pixels with the origin at the top-left
*corner* of the image. One patch becomes one detection::

    {"type": "Feature", "id": "<uuid4>",
     "geometry": {"type": "Polygon",
                  "coordinates": [[[x, y], [x+P, y], [x+P, y+P], [x, y+P], [x, y]]]},
     "properties": {"objectType": "detection",
                    "classification": {"name": "tumor cluster 2", "color": [44, 160, 44]},
                    "measurements": {"attention": 0.0031, "attention x uniform": 1.7}}}

Thousands of patch squares import into QuPath as detections (its hierarchy handles many
detections much better than many annotations); *Measure -> Show measurement maps* then colours
them by any measurement with its own colour bar, and the class colours show cluster maps.

The squares are written without shapely (a patch is an axis-aligned square: its ring is closed
and counter-clockwise by construction), so 10 000 patches export in well under a second
(``bench/bench_qupath.py``).
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from histokd_core.errors import DataError
from histokd_core.io import atomic_write_text, check_writable

#: QuPath object types a file of detections may hold.
DETECTION_TYPES = ("detection", "tile", "cell")


@dataclass
class PatchClasses:
    """A cluster map as QuPath classes.

    Attributes
    ----------
    ids : ``(n,)`` int cluster id per patch (-1 = no class).
    names : cluster id -> class name shown in QuPath (default ``"<prefix> <id>"``).
    colors : cluster id -> RGB 0..255 (pass the viewer's cluster colours,
        :func:`histokd_core.explain.label_color`); an id without one has no colour.
    prefix : default name prefix, e.g. ``"tumor cluster"``.
    """

    ids: np.ndarray
    names: dict[int, str] = field(default_factory=dict)
    colors: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    prefix: str = "cluster"

    def classification(self, cluster_id: int) -> dict | None:
        """``{"name", "color"}`` of one id, or None for -1."""
        if cluster_id < 0:
            return None
        out: dict = {"name": str(self.names.get(cluster_id, f"{self.prefix} {cluster_id}"))}
        if cluster_id in self.colors:
            out["color"] = [int(c) for c in self.colors[cluster_id]]
        return out


def _coords(coords, n_where: str) -> np.ndarray:
    c = np.asarray(coords)
    if c.ndim != 2 or c.shape[1] != 2:
        raise DataError(f"{n_where}: expected (n, 2) level-0 (x, y) patch corners, got shape {c.shape}")
    if not np.all(np.isfinite(c)):
        raise DataError(f"{n_where}: patch coordinates must be finite")
    return c


def detection_features(
    coords: np.ndarray,
    patch_size: float,
    measurements: Mapping[str, np.ndarray],
    classes: PatchClasses | None = None,
    object_type: str = "detection",
    ndigits: int = 6,
) -> list[dict]:
    """One QuPath detection Feature per patch.

    Parameters
    ----------
    coords : ``(n, 2)`` level-0 top-left ``(x, y)`` px of each patch.
    patch_size : patch side in level-0 px (the square is ``[x, x + P] x [y, y + P]``).
    measurements : measurement name -> ``(n,)`` values (NaN / inf values are left out of that
        patch's map: QuPath cannot read them).
    classes : an optional cluster map; each patch gets its class name and colour.
    object_type : ``"detection"`` (default) or ``"tile"``.
    ndigits : significant digits kept for measurement values.
    """
    c = _coords(coords, "coords")
    n = c.shape[0]
    if object_type not in DETECTION_TYPES:
        raise DataError(f"object_type must be one of {DETECTION_TYPES}, got {object_type!r}")
    if not patch_size or float(patch_size) <= 0:
        raise DataError(f"patch_size: expected a positive level-0 size, got {patch_size}")
    cols = {}
    for name, values in measurements.items():
        v = np.asarray(values, dtype=np.float64).ravel()
        if v.size != n:
            raise DataError(f"measurement {name!r}: expected {n} values (one per patch), got {v.size}")
        cols[str(name)] = v
    ids = None
    if classes is not None:
        ids = np.asarray(classes.ids).ravel()
        if ids.size != n:
            raise DataError(f"classes: expected {n} cluster ids (one per patch), got {ids.size}")
        ids = ids.astype(np.int64)
        lookup = {int(k): classes.classification(int(k)) for k in np.unique(ids)}
    p = float(patch_size)
    xs, ys = c[:, 0].astype(np.float64).tolist(), c[:, 1].astype(np.float64).tolist()
    names = list(cols)
    table = np.stack([cols[k] for k in names], axis=1) if names else np.zeros((n, 0))
    finite = np.isfinite(table)
    rounded = [[float(f"{v:.{ndigits}g}") for v in row] for row in table.tolist()]
    out = []
    for i in range(n):
        x, y = xs[i], ys[i]
        props: dict = {"objectType": object_type}
        if ids is not None and lookup[int(ids[i])] is not None:
            props["classification"] = lookup[int(ids[i])]
        meas = {k: rounded[i][j] for j, k in enumerate(names) if finite[i, j]}
        if meas:
            props["measurements"] = meas
        out.append({
            "type": "Feature",
            "id": str(uuid.uuid4()),
            "geometry": {"type": "Polygon", "coordinates": [
                [[x, y], [x + p, y], [x + p, y + p], [x, y + p], [x, y]]]},
            "properties": props,
        })
    return out


def write_detections(
    path: str | os.PathLike,
    coords: np.ndarray,
    patch_size: float,
    measurements: Mapping[str, np.ndarray],
    classes: PatchClasses | None = None,
    object_type: str = "detection",
    overwrite: bool = False,
) -> Path:
    """Write one QuPath detection per patch as a GeoJSON FeatureCollection, atomically.

    See :func:`detection_features` for the arguments. Returns the path written; an existing file
    is an error unless ``overwrite``.
    """
    path = check_writable(path, overwrite=overwrite)
    feats = detection_features(coords, patch_size, measurements, classes, object_type)
    text = json.dumps({"type": "FeatureCollection", "features": feats}, ensure_ascii=False,
                      separators=(",", ":"))
    return atomic_write_text(path, text, overwrite=overwrite)


@dataclass
class PatchObjects:
    """Square QuPath detections read back as patches.

    Attributes
    ----------
    coords : ``(n, 2)`` int64 level-0 top-left ``(x, y)``; patch_size : level-0 side.
    measurements : name -> ``(n,)`` float (NaN where a patch lacks the measurement).
    classification : ``(n,)`` class names (``""`` for none); colors : class name -> RGB.
    """

    coords: np.ndarray
    patch_size: int
    measurements: dict[str, np.ndarray]
    classification: list[str]
    colors: dict[str, tuple[int, int, int]]


def read_detections(path: str | os.PathLike) -> PatchObjects:
    """Read square detections / tiles (as written by :func:`write_detections` or by QuPath's own
    tiling) back into patch coordinates, measurements and classes.

    Annotations in the same file are ignored (read them with
    :func:`histokd_core.export.read_annotations`); a detection that is not an axis-aligned square
    of the common size is a :class:`DataError` naming its index.
    """
    from histokd_core.export.geojson import read_geojson

    path = Path(path)
    objs = [a for a in read_geojson(path) if a.object_type in DETECTION_TYPES]
    if not objs:
        raise DataError(f"{path}: no detection or tile objects")
    coords, sizes, names, colors = [], [], [], {}
    for i, a in enumerate(objs):
        x0, y0, x1, y1 = a.geometry.bounds
        if not math.isclose(a.geometry.area, (x1 - x0) * (y1 - y0), rel_tol=1e-6) or not math.isclose(
            x1 - x0, y1 - y0, rel_tol=1e-6
        ):
            raise DataError(f"{path}: detection {i} is not an axis-aligned square patch")
        coords.append((x0, y0))
        sizes.append(x1 - x0)
        names.append(a.classification or "")
        if a.classification and a.color is not None:
            colors[a.classification] = a.color
    sizes = np.asarray(sizes)
    if not np.allclose(sizes, sizes[0], rtol=1e-6):
        raise DataError(f"{path}: detections have different sizes ({sizes.min()}..{sizes.max()} px)")
    keys = sorted({k for a in objs for k in a.measurements})
    meas = {k: np.array([a.measurements.get(k, np.nan) for a in objs], dtype=np.float64) for k in keys}
    return PatchObjects(np.rint(np.asarray(coords)).astype(np.int64), int(round(sizes[0])), meas,
                        names, colors)


def read_annotations(path: str | os.PathLike, object_types: tuple[str, ...] = ("annotation",)):
    """QuPath annotations of a GeoJSON file (FeatureCollection, list or one Feature), without the
    detections a file may also hold (a cell or tile export can have millions).

    Returns a list of :class:`~histokd_core.export.Annotation` in level-0 px (corner origin).
    """
    from histokd_core.export.geojson import read_geojson

    return [a for a in read_geojson(path) if a.object_type in object_types]

