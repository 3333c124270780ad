"""An :class:`Explanation` -> napari LayerDataTuples, aligned with the slide layer.

Every layer is placed with :mod:`histokd_core.slide.geometry` (pixel-centre convention), in the
slide layer's world units (``world_mpp`` = microns per level-0 px, or 1.0 for a slide shown in
pixels). Heatmaps are float images with NaN where no patch lies (transparent), explicit
contrast limits and a perceptual colormap; cluster maps are Labels; memory components are one
``(K, rows, cols)`` image; top patches are a Points layer of squares.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from histokd_core.explain import cluster_sizes, label_color, rasterize, rasterize_labels
from histokd_core.methods.base import Explanation
from histokd_core.slide.geometry import patch_centres_world

LayerData = tuple[Any, dict[str, Any], str]

HEATMAP_COLORMAP = "inferno"
PATHWAY_COLORMAP = "viridis"
MEMORY_COLORMAP = "magma"


def contrast_limits(values: np.ndarray) -> list[float]:
    """``[low, high]`` of the finite values (2nd-98th percentile), never a zero-width range."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return [0.0, 1.0]
    lo, hi = np.percentile(v, [2, 98])
    if not hi > lo:
        lo, hi = float(v.min()), float(v.max())
    if not hi > lo:
        hi = lo + (abs(lo) * 1e-6 or 1e-6)
    return [float(lo), float(hi)]


def _heatmap(expl: Explanation, values, name: str, cmap: str, world_mpp: float, kind: str, stride):
    raster = rasterize(expl.coords, values, expl.patch_size, stride=stride)
    kwargs = {
        "name": name,
        "colormap": cmap,
        "contrast_limits": contrast_limits(raster.grid),
        "opacity": 0.6,
        "blending": "translucent",
        "interpolation2d": "nearest",
        "metadata": {"histokd_kind": kind, "raster_mode": raster.mode, "cell_level0": raster.cell,
                     "footprint_level0": raster.footprint, "origin_xy": raster.origin_xy,
                     "world_mpp": world_mpp},
        **raster.transform(world_mpp).as_kwargs(),
    }
    return raster, (raster.grid.astype(np.float32), kwargs, "image")


def ranked_pathways(expl: Explanation) -> list[str]:
    """Pathway names, most important first (``pathway_scores``; map order when unscored)."""
    names = list(expl.pathway_maps)
    return sorted(names, key=lambda n: -float(expl.pathway_scores.get(n, -np.inf)))


def pathway_grids(expl: Explanation, stride: int | None = None) -> dict[str, np.ndarray]:
    """Rasterised pathway maps in rank order (computed once; the widget swaps between them)."""
    return {
        n: rasterize(expl.coords, expl.pathway_maps[n], expl.patch_size, stride=stride).grid.astype(np.float32)
        for n in ranked_pathways(expl)
    }


def explanation_layers(
    expl: Explanation,
    world_mpp: float,
    prefix: str = "",
    stride: int | None = None,
    units: tuple[str, str] | None = None,
) -> list[LayerData]:
    """All overlays of an Explanation, in world units of ``world_mpp`` per level-0 pixel.

    Layers (present when the Explanation has the field): ``attention`` heatmap; ``pathway``
    heatmap showing the top-ranked pathway (``metadata["pathway_grids"]`` holds every pathway's
    grid in rank order); one Labels per cluster map (``metadata["legend"]``: cluster id ->
    patch count); ``memory`` ``(K, rows, cols)`` activations; ``top patches`` Points with
    ``features`` (``map``, ``rank``, ``x``, ``y``). ``units`` (the slide layer's, e.g.
    ``("micrometer", "micrometer")``) are given to every layer so napari keeps physical units.
    """
    layers: list[LayerData] = []
    p = f"{prefix} " if prefix else ""
    if expl.attention is not None:
        _, layer = _heatmap(expl, expl.attention, f"{p}attention", HEATMAP_COLORMAP, world_mpp, "attention", stride)
        layers.append(layer)
    if expl.pathway_maps:
        grids = pathway_grids(expl, stride)
        first = next(iter(grids))
        _, (data, kwargs, kind) = _heatmap(
            expl, expl.pathway_maps[first], f"{p}pathway", PATHWAY_COLORMAP, world_mpp, "pathway", stride
        )
        kwargs["metadata"].update(pathway_grids=grids, pathway=first,
                                  pathway_scores={n: float(expl.pathway_scores.get(n, np.nan)) for n in grids})
        layers.append((data, kwargs, kind))
    for cname, ids in expl.clusters.items():
        from napari.utils.colormaps import DirectLabelColormap

        raster = rasterize_labels(expl.coords, ids, expl.patch_size, stride=stride)
        sizes = cluster_sizes(ids)
        colors = {None: (0, 0, 0, 0), 0: (0, 0, 0, 0)}
        colors.update({k + 1: tuple(c / 255 for c in label_color(k)) + (1.0,) for k in sizes})
        layers.append((raster.grid, {
            "name": f"{p}{cname} clusters",
            "opacity": 0.5,
            "colormap": DirectLabelColormap(color_dict=colors),
            "metadata": {"histokd_kind": "clusters", "clusters": cname, "legend": sizes, "world_mpp": world_mpp},
            **raster.transform(world_mpp).as_kwargs(),
        }, "labels"))
    if expl.memory is not None and len(expl.memory):
        mem = np.asarray(expl.memory, dtype=np.float64)
        rasters = [rasterize(expl.coords, row, expl.patch_size, stride=stride) for row in mem]
        t = rasters[0].transform(world_mpp)
        names = expl.memory_names or [f"component {i}" for i in range(len(mem))]
        layers.append((np.stack([r.grid for r in rasters]).astype(np.float32), {
            "name": f"{p}memory components",
            "colormap": MEMORY_COLORMAP,
            "contrast_limits": contrast_limits(mem),
            "opacity": 0.6,
            "blending": "translucent",
            "interpolation2d": "nearest",
            "scale": (1.0, *t.scale),
            "translate": (0.0, *t.translate),
            "metadata": {"histokd_kind": "memory", "memory_names": names, "world_mpp": world_mpp,
                         "raster_mode": rasters[0].mode, "cell_level0": rasters[0].cell,
                         "footprint_level0": rasters[0].footprint, "origin_xy": rasters[0].origin_xy},
        }, "image"))
    if expl.top_patches:
        rows = [(name, r, int(i)) for name, idx in expl.top_patches.items() for r, i in enumerate(np.asarray(idx).ravel())]
        if rows:
            idx = np.array([i for _, _, i in rows])
            centres = patch_centres_world(expl.coords[idx], expl.patch_size, world_mpp)
            layers.append((centres, {
                "name": f"{p}top patches",
                "symbol": "square",
                "size": expl.patch_size * world_mpp,
                "face_color": "transparent",
                "border_color": "cyan",
                "border_width": 0.08,
                "features": {"map": [n for n, _, _ in rows], "rank": [r + 1 for _, r, _ in rows],
                             "x": expl.coords[idx, 0], "y": expl.coords[idx, 1]},
                "metadata": {"histokd_kind": "top_patches", "world_mpp": world_mpp},
            }, "points"))
    if units is not None:
        for data, kwargs, _ in layers:
            kwargs["units"] = ("pixel", *units) if len(kwargs.get("scale", (0, 0))) == 3 else tuple(units)
    return layers


def layer_raster(layer, component: int = 0):
    """The :class:`PatchRaster` shown by a heatmap layer made here (current pathway / component)."""
    from histokd_core.explain import PatchRaster

    m = layer.metadata
    grid = np.asarray(layer.data)
    if grid.ndim == 3:
        grid = grid[component]
    return PatchRaster(grid=grid, origin_xy=tuple(m["origin_xy"]), cell=float(m["cell_level0"]),
                       footprint=float(m["footprint_level0"]), mode=m["raster_mode"], exact=True,
                       patch_cells=np.zeros((0, 2), dtype=np.int64))


def prediction_text(expl: Explanation, method: str = "") -> str:
    """One line for the widget: risk or probability, and the risk group."""
    parts = [method] if method else []
    if expl.risk is not None:
        parts.append(f"risk {expl.risk:.3f}")
    if expl.probability is not None:
        parts.append(f"P(positive) {expl.probability:.3f}")
    parts.append(f"group: {expl.risk_group}" if expl.risk_group else "group: n/a (no fold predictions)")
    return " | ".join(parts)
