"""QuPath-compatible GeoJSON (QuPath >= 0.4 fields; older fields accepted on import).

Coordinates are level-0 pixels ``[x, y]`` with the origin at the top-left *corner* of the image
(QuPath's convention; napari's pixel centres are 0.5 px further in, see
``napari_histokd._geojson``). Each feature is::

    {"type": "Feature", "id": "<uuid4>",
     "geometry": {"type": "Polygon", "coordinates": [[[x, y], ...]]},
     "properties": {"objectType": "annotation", "name": ...,
                    "classification": {"name": "Tumor", "color": [r, g, b]},
                    "measurements": {"Mean score": 0.8, "Area µm^2": 1234.5}}}

Rings are closed, exteriors counter-clockwise and holes clockwise (RFC 7946), geometries are
validated with shapely, NaN measurements are dropped (QuPath cannot read them). On import,
``object_type`` (QuPath 0.2/0.3), ``classification.colorRGB`` (packed int),
``classification.names`` (derived classes, qubalab) and list-style measurements
``[{"name": ..., "value": ...}]`` are accepted too.
"""

from __future__ import annotations

import json
import logging
import math
import os
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import shapely
from shapely.geometry import MultiPolygon, Polygon, mapping, shape
from shapely.geometry.polygon import orient

from histokd_core.errors import DataError
from histokd_core.io import atomic_write_text, check_writable

log = logging.getLogger(__name__)

AREA_KEY = "Area µm^2"
SCORE_KEY = "Mean score"


@dataclass
class Annotation:
    """One QuPath object.

    Attributes
    ----------
    geometry : shapely Polygon / MultiPolygon in level-0 px (corner convention).
    classification : class name (e.g. "Tumor"), or None.
    color : RGB 0..255 of the class, or None.
    name : object name shown in QuPath, or None.
    measurements : name -> number.
    object_type : "annotation" (default), "detection", "tile", ...
    id : UUID string (a new one when not given).
    """

    geometry: Polygon | MultiPolygon
    classification: str | None = None
    color: tuple[int, int, int] | None = None
    name: str | None = None
    measurements: dict[str, float] = field(default_factory=dict)
    object_type: str = "annotation"
    id: str = field(default_factory=lambda: str(uuid.uuid4()))


def clean_polygon(geom, where: str = "geometry") -> Polygon | MultiPolygon:
    """Make ``geom`` a valid, oriented (exterior CCW) Polygon or MultiPolygon, or raise."""
    if geom is None or geom.is_empty:
        raise DataError(f"{where}: empty polygon")
    if not geom.is_valid:
        geom = shapely.make_valid(geom)
        if geom.geom_type == "GeometryCollection":
            polys = [g for g in geom.geoms if g.geom_type in ("Polygon", "MultiPolygon")]
            geom = shapely.union_all(polys) if polys else None
        if geom is None or geom.is_empty or geom.geom_type not in ("Polygon", "MultiPolygon"):
            raise DataError(f"{where}: polygon is self-intersecting and has no valid area")
    if geom.geom_type == "Polygon":
        return orient(geom, sign=1.0)
    if geom.geom_type == "MultiPolygon":
        return MultiPolygon([orient(p, sign=1.0) for p in geom.geoms])
    raise DataError(f"{where}: expected a Polygon or MultiPolygon, got {geom.geom_type}")


def with_area(annotation: Annotation, mpp: float | None) -> Annotation:
    """Add ``Area µm^2`` to the measurements (when ``mpp`` is known)."""
    if mpp:
        annotation.measurements[AREA_KEY] = float(annotation.geometry.area) * float(mpp) ** 2
    return annotation


def _round(coords, ndigits: int):
    if isinstance(coords, (list, tuple)) and coords and isinstance(coords[0], (int, float)):
        return [round(float(v), ndigits) for v in coords]
    return [_round(c, ndigits) for c in coords]


def to_feature(a: Annotation, ndigits: int = 3) -> dict:
    """One GeoJSON Feature dict (QuPath >= 0.4 layout)."""
    geom = clean_polygon(a.geometry, where=f"annotation {a.name or a.id}")
    gj = mapping(geom)
    props: dict = {"objectType": a.object_type}
    if a.name:
        props["name"] = a.name
    if a.classification:
        cls: dict = {"name": a.classification}
        if a.color is not None:
            cls["color"] = [int(v) for v in a.color]
        props["classification"] = cls
    meas = {k: float(v) for k, v in a.measurements.items() if v is not None and math.isfinite(float(v))}
    if meas:
        props["measurements"] = meas
    return {
        "type": "Feature",
        "id": a.id,
        "geometry": {"type": gj["type"], "coordinates": _round(gj["coordinates"], ndigits)},
        "properties": props,
    }


def to_feature_collection(annotations: Iterable[Annotation]) -> dict:
    """A GeoJSON FeatureCollection dict."""
    return {"type": "FeatureCollection", "features": [to_feature(a) for a in annotations]}


def write_geojson(
    path: str | os.PathLike, annotations: Sequence[Annotation], overwrite: bool = False
) -> Path:
    """Write a QuPath-importable ``.geojson`` atomically; refuse an existing file unless ``overwrite``."""
    path = check_writable(path, overwrite=overwrite)
    text = json.dumps(to_feature_collection(annotations), ensure_ascii=False)
    return atomic_write_text(path, text, overwrite=overwrite)


def _unpack_rgb(value: int) -> tuple[int, int, int]:
    v = int(value) & 0xFFFFFF  # QuPath packs ARGB into a signed 32-bit int
    return ((v >> 16) & 255, (v >> 8) & 255, v & 255)


def _classification(cls, where: str) -> tuple[str | None, tuple[int, int, int] | None]:
    if cls is None:
        return None, None
    if isinstance(cls, str):
        return cls, None
    if not isinstance(cls, dict):
        raise DataError(f"{where}: classification must be an object or a string, got {type(cls).__name__}")
    name = cls.get("name")
    if name is None and cls.get("names"):
        name = ": ".join(str(n) for n in cls["names"])
    color = None
    if cls.get("color") is not None:
        c = cls["color"]
        color = _unpack_rgb(c) if isinstance(c, int) else tuple(int(v) for v in c[:3])
    elif cls.get("colorRGB") is not None:
        color = _unpack_rgb(cls["colorRGB"])
    return name, color


def _measurements(meas, where: str) -> dict[str, float]:
    if meas is None:
        return {}
    if isinstance(meas, dict):
        items = meas.items()
    elif isinstance(meas, list):
        try:
            items = [(m["name"], m["value"]) for m in meas]
        except (KeyError, TypeError) as exc:
            raise DataError(f"{where}: list-style measurements need 'name' and 'value' entries") from exc
    else:
        raise DataError(f"{where}: measurements must be an object or a list")
    out = {}
    for k, v in items:
        try:
            out[str(k)] = float(v)
        except (TypeError, ValueError):
            log.warning("%s: measurement %r is not a number; skipped", where, k)
    return out


def from_feature(feature: dict, where: str = "feature") -> Annotation | None:
    """Parse one Feature; returns None (with a warning) for non-polygon geometries."""
    if not isinstance(feature, dict) or feature.get("type") != "Feature":
        raise DataError(f"{where}: expected a GeoJSON Feature object")
    geom_json = feature.get("geometry")
    if not geom_json:
        raise DataError(f"{where}: missing 'geometry'")
    try:
        geom = shape(geom_json)
    except Exception as exc:  # shapely raises several types for malformed geometry
        raise DataError(f"{where}: invalid geometry ({exc})") from exc
    if geom.geom_type not in ("Polygon", "MultiPolygon"):
        log.warning("%s: %s geometry skipped (only polygons are imported)", where, geom.geom_type)
        return None
    props = feature.get("properties") or {}
    obj = props.get("objectType") or props.get("object_type") or props.get("type") or "annotation"
    name, color = _classification(props.get("classification"), where)
    if color is None and props.get("color") is not None:
        color = tuple(int(v) for v in props["color"][:3])
    fid = feature.get("id")
    return Annotation(
        geometry=clean_polygon(geom, where),
        classification=name,
        color=color,
        name=props.get("name"),
        measurements=_measurements(props.get("measurements"), where),
        object_type=str(obj),
        id=str(fid) if fid else str(uuid.uuid4()),
    )


def read_geojson(path: str | os.PathLike) -> list[Annotation]:
    """Read polygons from a QuPath (any version) or plain GeoJSON file.

    Accepts a FeatureCollection, a bare list of Features (QuPath also writes these) or one Feature.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataError(f"{path}: file not found") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from exc
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        feats = data.get("features")
        if not isinstance(feats, list):
            raise DataError(f"{path}: FeatureCollection without a 'features' list")
    elif isinstance(data, list):
        feats = data
    elif isinstance(data, dict) and data.get("type") == "Feature":
        feats = [data]
    else:
        raise DataError(f"{path}: expected a GeoJSON FeatureCollection, Feature or list of Features")
    out = []
    for i, f in enumerate(feats):
        a = from_feature(f, where=f"{path}: feature {i}")
        if a is not None:
            out.append(a)
    return out


def regions_to_annotations(
    regions: Sequence,
    mpp: float | None,
    classification: str = "Region",
    color: tuple[int, int, int] | None = (220, 50, 32),
    score_name: str = SCORE_KEY,
) -> list[Annotation]:
    """Annotations from :class:`histokd_core.explain.Region` s (mean score + area in um^2)."""
    out = []
    for i, r in enumerate(regions):
        a = Annotation(
            geometry=r.polygon,
            classification=classification,
            color=color,
            name=f"{classification} {i + 1}",
            measurements={score_name: r.mean_score},
        )
        out.append(with_area(a, mpp))
    return out
