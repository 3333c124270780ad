"""napari Shapes <-> QuPath GeoJSON (writer and reader contributions).

napari puts pixel *centres* at integer data coordinates, QuPath puts the image origin at the
top-left *corner* of pixel (0, 0). A vertex at world ``(y, x)`` um on a slide shown at ``mpp``
um/px is level-0 pixel centre ``(x / mpp, y / mpp)``, i.e. QuPath ``(x / mpp + 0.5, y / mpp + 0.5)``.
The reader inverts this and returns a Shapes layer with ``scale = (mpp, mpp)`` so that it lands
on the slide.

The conversions take the slide's scale explicitly: ``mpp`` world units per level-0 pixel (its
microns per pixel, or 1.0 for a slide shown in pixels) and whether those units are microns
(``physical``: only then do annotations get an area in um^2). A Shapes layer made here records
them in ``metadata["histokd_mpp"]`` and ``metadata["histokd_physical"]``. The Export dock reads
the scale of its own viewer's slide layer (:func:`slide_scale`); only the npe2 reader and writer
below, which napari calls without a viewer, fall back to ``napari.current_viewer()``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
from shapely.geometry import MultiPolygon, Polygon

from histokd_core.errors import HistoKDError
from histokd_core.export import Annotation, read_geojson, with_area, write_geojson
from histokd_core.slide.geometry import qupath_to_world, world_to_qupath

log = logging.getLogger(__name__)

LayerData = tuple[Any, dict[str, Any], str]
SUPPORTED = ("polygon", "rectangle", "ellipse")


def slide_scale(viewer) -> tuple[float, bool] | None:
    """``(mpp, physical)`` of ``viewer``'s slide layer: world units per level-0 px (its ``scale``)
    and whether they are microns (False for a slide without mpp, shown in pixels); None when no
    slide is open."""
    if viewer is None:
        return None
    slides = [layer for layer in viewer.layers if layer.metadata.get("histokd_kind") == "slide"]
    scales = {float(layer.scale[-1]) for layer in slides}
    if len(scales) > 1:
        raise HistoKDError(f"several slides with different scales are open ({sorted(scales)}); "
                           "set the Shapes layer's metadata['histokd_mpp']")
    if not slides:
        return None
    return scales.pop(), not slides[0].metadata.get("mpp_missing", False)


def _layer_scale(attributes: dict) -> tuple[float, bool]:
    """The scale a Shapes layer given to the npe2 writer lies at: its own metadata, else the
    current viewer's slide (napari gives writers no viewer), else pixels."""
    meta = attributes.get("metadata") or {}
    if meta.get("histokd_mpp"):
        return float(meta["histokd_mpp"]), bool(meta.get("histokd_physical", True))
    return slide_scale(_current_viewer()) or (1.0, False)


def _current_viewer():
    import napari

    return napari.current_viewer()


def _world_matrix(attributes: dict) -> np.ndarray:
    """3 x 3 homogeneous data -> world matrix of a 2-D layer (scale, translate, affine)."""
    scale = np.asarray(attributes.get("scale", (1.0, 1.0)), dtype=np.float64)[-2:]
    translate = np.asarray(attributes.get("translate", (0.0, 0.0)), dtype=np.float64)[-2:]
    m = np.eye(3)
    m[:2, :2] = np.diag(scale)
    m[:2, 2] = translate
    affine = attributes.get("affine")
    if affine is not None:
        a = np.asarray(getattr(affine, "affine_matrix", affine), dtype=np.float64)
        a = a[-3:, -3:] if a.shape[0] >= 3 else np.eye(3)
        m = a @ m
    return m


def shapes_to_annotations(
    data: list[np.ndarray], attributes: dict, mpp: float, physical: bool = True
) -> list[Annotation]:
    """QuPath annotations of a Shapes layer's polygons, rectangles and ellipses.

    ``mpp`` is the slide's world units per level-0 pixel; ``physical`` whether they are microns
    (then each annotation gets its area in um^2). Paths and lines have no area and are skipped
    with a warning. Classification comes from the ``features`` column ``classification`` (else
    the layer name), colour from ``edge_color``.
    """
    meta = attributes.get("metadata") or {}
    shape_types = attributes.get("shape_type") or ["polygon"] * len(data)
    if isinstance(shape_types, str):
        shape_types = [shape_types] * len(data)
    features = attributes.get("features")
    feats = features.to_dict("list") if hasattr(features, "to_dict") else dict(features or {})
    edge = np.asarray(attributes.get("edge_color", np.zeros((len(data), 4))), dtype=np.float64).reshape(-1, 4)
    ids = meta.get("geojson_ids") or []
    matrix = _world_matrix(attributes)
    out = []
    for i, (verts, kind) in enumerate(zip(data, shape_types)):
        if kind not in SUPPORTED:
            log.warning("shape %d is a %s without area; not exported", i, kind)
            continue
        v = np.asarray(verts, dtype=np.float64)[:, -2:]
        if kind == "ellipse":
            c, r = v.mean(0), (v.max(0) - v.min(0)) / 2
            t = np.linspace(0, 2 * np.pi, 65)[:-1]
            v = np.stack([c[0] + r[0] * np.sin(t), c[1] + r[1] * np.cos(t)], 1)
        world = (matrix @ np.c_[v, np.ones(len(v))].T).T[:, :2]
        cls = feats.get("classification", [None] * len(data))[i] if feats else None
        color = tuple(int(round(c * 255)) for c in edge[i][:3]) if i < len(edge) else None
        meas = {k[len("measurement:"):]: float(vals[i]) for k, vals in feats.items() if k.startswith("measurement:")}
        ann = Annotation(
            geometry=Polygon(world_to_qupath(world, mpp)),
            classification=(None if cls is None or (isinstance(cls, float) and np.isnan(cls)) else str(cls))
            or attributes.get("name"),
            color=color,
            name=(feats.get("name", [None] * len(data))[i] if feats else None) or None,
            measurements=meas,
        )
        if i < len(ids) and ids[i]:
            ann.id = ids[i]
        if physical:
            with_area(ann, mpp)
        out.append(ann)
    return out


def write_shapes(path: str, data: Any, attributes: dict) -> list[str]:
    """napari writer: one Shapes layer -> QuPath GeoJSON.

    An existing file is never replaced: a writer cannot see whether the user confirmed in a
    dialog (``viewer.layers.save`` asks nothing), so the Export widget, which asks, is the way
    to replace a file (or set ``metadata["histokd_overwrite"] = True`` on the layer)."""
    if not str(path).lower().endswith((".geojson", ".json")):
        path = f"{path}.geojson"
    anns = shapes_to_annotations(list(data), attributes, *_layer_scale(attributes))
    overwrite = bool((attributes.get("metadata") or {}).get("histokd_overwrite", False))
    return [str(write_geojson(path, anns, overwrite=overwrite))]


def annotations_to_shapes(
    annotations: list[Annotation], mpp: float, name: str = "annotations", physical: bool = True
) -> LayerData:
    """Shapes layer data for annotations on a slide at ``mpp`` world units per level-0 px
    (microns when ``physical``); holes are dropped (napari polygons have none)."""
    polys, cls, names, colors, ids, meas_keys = [], [], [], [], [], set()
    rows = []
    for a in annotations:
        geoms = a.geometry.geoms if isinstance(a.geometry, MultiPolygon) else [a.geometry]
        for g in geoms:
            if len(g.interiors):
                log.warning("%s: %d hole(s) not shown (napari polygons have no holes)", a.name or a.id, len(g.interiors))
            xy = np.asarray(g.exterior.coords)[:-1]
            polys.append(qupath_to_world(xy, 1.0))  # data = level-0 px centres; scale = mpp
            cls.append(a.classification or "")
            names.append(a.name or "")
            colors.append([c / 255 for c in (a.color or (255, 255, 0))] + [1.0])
            ids.append(a.id)
            rows.append(a.measurements)
            meas_keys |= set(a.measurements)
    features = {"classification": cls, "name": names}
    for k in sorted(meas_keys):
        features[f"measurement:{k}"] = [r.get(k, np.nan) for r in rows]
    kwargs = {
        "name": name,
        "shape_type": "polygon",
        "scale": (mpp, mpp),
        "edge_color": np.array(colors) if colors else "yellow",
        "face_color": "transparent",
        "edge_width": 2.0,
        "features": features,
        "metadata": {"histokd_kind": "geojson", "histokd_mpp": mpp, "histokd_physical": physical,
                     "geojson_ids": ids},
    }
    return polys, kwargs, "shapes"


def read_geojson_layers(path: str | list[str]) -> list[LayerData]:
    """napari reader: QuPath GeoJSON -> Shapes on the current viewer's slide (napari gives readers
    no viewer; without a slide the shapes are in pixels)."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    mpp, physical = slide_scale(_current_viewer()) or (1.0, False)
    return [annotations_to_shapes(read_geojson(p), mpp, name=os.path.basename(str(p)), physical=physical)
            for p in paths]


def get_geojson_reader(path: str | list[str]):
    """Return :func:`read_geojson_layers` for ``.geojson`` files, else None."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if paths and all(str(p).lower().endswith(".geojson") and os.path.isfile(p) for p in paths):
        return read_geojson_layers
    return None
