"""An :class:`Explanation` -> napari LayerDataTuples, aligned with the slide layer.

Every layer is placed with :mod:`histokd_core.slide.geometry` (pixel-centre convention), in the
slide layer's world units (``world_mpp`` = microns per level-0 px, or 1.0 for a slide shown in
pixels). Heatmaps are float images in their map's unit (attention: multiples of uniform; a
contribution: the model's own, ``Explanation.contribution_unit``, on the diverging scale; pathway
maps: attention, or signed contributions in ``Explanation.pathway_unit``) with
NaN where no patch lies (transparent), the range and colour table of :mod:`histokd_core.explain.colour`, and a lower opacity when the map is
nearly uniform (so a flat map does not hide the tissue); cluster maps are Labels; memory
components are one 2-D image showing one component at a time; top patches are a Points layer of
ranked, labelled squares.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from histokd_core.explain import cluster_sizes, label_color, rasterize, rasterize_labels
from histokd_core.explain.colour import (
    MapKind,
    MapScale,
    ScaleMode,
    has_fixed_range,
    map_scale,
    to_display,
)
from histokd_core.methods.base import Explanation
from histokd_core.slide.geometry import patch_centres_world

LayerData = tuple[Any, dict[str, Any], str]

#: the map shown first after Analyse (the others are added hidden), in order of preference: a
#: model with a contribution map (a linear student) pools its patches uniformly, so its
#: contribution says more than its attention.
MAIN_MAPS = ("contribution", "attention", "pathway", "memory")
#: opacity of a heatmap whose map is nearly uniform (its colour would cover the whole tissue).
NEAR_UNIFORM_OPACITY = 0.35


def map_opacity(scale: MapScale) -> float:
    """A heatmap layer's opacity: 1, or :data:`NEAR_UNIFORM_OPACITY` for a nearly uniform map."""
    return NEAR_UNIFORM_OPACITY if scale.near_uniform else 1.0


def napari_colormap(scale: MapScale):
    """A napari ``Colormap`` from the RGBA table of a :class:`MapScale`."""
    from napari.utils.colormaps import Colormap

    return Colormap(scale.colormap, name=scale.colormap_name, interpolation="linear")


def scale_metadata(scale: MapScale) -> dict[str, Any]:
    """What the dock's legend shows for a map: kind, unit, range, mode, meaning, near-uniform note."""
    return {"kind": scale.kind, "unit": scale.unit, "low": scale.low, "high": scale.high, "mode": scale.mode,
            "meaning": scale.meaning, "note": scale.note, "near_uniform": scale.near_uniform,
            "label": scale.label}


def _raster_meta(raster, world_mpp: float) -> dict[str, Any]:
    return {"raster_mode": raster.mode, "cell_level0": raster.cell, "footprint_level0": raster.footprint,
            "origin_xy": raster.origin_xy, "world_mpp": world_mpp}


def layer_scale(display, kind: MapKind, mode: ScaleMode, map_name: str,
                cohort: dict[str, MapScale] | None = None, unit: str | None = None) -> MapScale:
    """:func:`~histokd_core.explain.colour.map_scale` of one map; the ``cohort`` mode takes the
    run's scale of ``map_name`` (``"attention"``, ``"contribution"``, ``"pathway:<name>"``,
    ``"memory:<component>"``) from ``cohort``
    (:func:`~histokd_core.workflows.predict_cohort.run_colour_scales`). A map with no fixed range
    (a contribution) gets the slide scale under ``"fixed"``, and its note says so. ``unit``: the
    model's for a contribution (``Explanation.contribution_unit``), else None (the kind's)."""
    import dataclasses

    from histokd_core.errors import DataError

    if mode == "cohort" and map_name not in (cohort or {}):
        raise DataError(f"cohort colour scale: the run's cohort maps have no {map_name!r} map "
                        "(predict all slides of this run with this model first)")
    if mode == "fixed" and not has_fixed_range(kind):
        scale = map_scale(display, kind, "slide", unit=unit)
        note = f"no fixed range for {kind} maps: this slide's scale"
        return dataclasses.replace(scale, note="; ".join(n for n in (note, scale.note) if n))
    return map_scale(display, kind, mode, (cohort or {}).get(map_name), unit=unit)


def _heatmap(expl: Explanation, values, name: str, world_mpp: float, kind: str, map_kind: MapKind,
             stride, mode: ScaleMode, cohort: dict[str, MapScale] | None, map_name: str):
    display = to_display(values, map_kind, n_patches=len(expl.coords))
    raster = rasterize(expl.coords, display, expl.patch_size, stride=stride)
    scale = layer_scale(display, map_kind, mode, map_name, cohort,
                        map_unit(expl, map_name, map_kind))
    kwargs = {
        "name": name,
        "colormap": napari_colormap(scale),
        "contrast_limits": scale.contrast_limits,
        "opacity": map_opacity(scale),
        "blending": "translucent",
        "interpolation2d": "nearest",
        "metadata": {"histokd_kind": kind, "map_kind": map_kind, "scale": scale_metadata(scale),
                     "cohort_scales": cohort, **_raster_meta(raster, world_mpp)},
        **raster.transform(world_mpp).as_kwargs(),
    }
    return raster, (raster.grid.astype(np.float32), kwargs, "image")


def map_unit(expl: Explanation, map_name: str, kind: MapKind) -> str | None:
    """The unit the model states for a contribution map (``kind`` ``"contribution"``):
    ``expl.pathway_unit`` for ``"pathway:<name>"`` maps, else ``expl.contribution_unit``; None
    for every other kind (its unit is the kind's)."""
    if kind != "contribution":
        return None
    return expl.pathway_unit if map_name.startswith("pathway:") else expl.contribution_unit


def ranked_pathways(expl: Explanation) -> list[str]:
    """Pathway names, largest absolute score first (the sign says the direction; map order when
    unscored)."""
    names = list(expl.pathway_maps)
    return sorted(names, key=lambda n: -abs(float(expl.pathway_scores.get(n, 0.0))))


def pathway_grids(expl: Explanation, stride: int | None = None) -> dict[str, np.ndarray]:
    """Rasterised pathway maps in rank order, in display units (attention: multiples of uniform;
    signed maps: ``expl.pathway_unit``); computed once, the widget swaps between them."""
    n = len(expl.coords)
    return {
        name: rasterize(expl.coords, to_display(expl.pathway_maps[name], expl.pathway_map_kind, n),
                        expl.patch_size,
                        stride=stride).grid.astype(np.float32)
        for name in ranked_pathways(expl)
    }


def explanation_layers(
    expl: Explanation,
    world_mpp: float,
    prefix: str = "",
    stride: int | None = None,
    units: tuple[str, str] | None = None,
    scale_mode: ScaleMode = "slide",
    cohort: dict[str, MapScale] | None = None,
) -> list[LayerData]:
    """All overlays of an Explanation, in world units of ``world_mpp`` per level-0 pixel.

    Layers (present when the Explanation has the field): ``contribution`` heatmap (each patch's
    share of the model's output, in ``expl.contribution_unit``, diverging scale), ``attention``
    heatmap and ``pathway`` heatmap (top-ranked pathway; ``metadata["pathway_grids"]`` holds every pathway's grid in rank
    order), both in multiples of uniform attention (1/n), the pathway maps unless they are signed
    contributions (``expl.pathway_unit``: diverging scale in that unit); one Labels per cluster map
    (``metadata["legend"]``: cluster id -> patch count, ``metadata["colors"]``: id -> RGB);
    ``memory`` cosine similarities of one component (2-D, so no slider; ``metadata["memory_grids"]``
    holds all ``(K, rows, cols)``, ``metadata["component"]`` the one shown); ``top patches`` Points of the main map
    (``metadata["top"]`` holds every map's ranked patches; the widget shows one map at a time).
    Every heatmap carries ``metadata["scale"]`` (:func:`scale_metadata`) and a colormap from
    :mod:`histokd_core.explain.colour`, with ``scale_mode`` (``cohort`` takes each map's scale
    from ``cohort``, keyed by map name: ``"attention"``, ``"pathway:<name>"``,
    ``"memory:<component>"``; the memory layer spans the widest of its components' ranges). Only
    the main map (:data:`MAIN_MAPS`) is visible; a nearly uniform heatmap is drawn at
    :data:`NEAR_UNIFORM_OPACITY`. ``units`` (the slide
    layer's, e.g. ``("micrometer", "micrometer")``) are given to every layer so napari keeps
    physical units.
    """
    layers: list[LayerData] = []
    p = f"{prefix} " if prefix else ""
    if expl.contribution is not None:
        _, layer = _heatmap(expl, expl.contribution, f"{p}contribution", world_mpp, "contribution",
                            "contribution", stride, scale_mode, cohort, "contribution")
        layers.append(layer)
    if expl.attention is not None:
        _, layer = _heatmap(expl, expl.attention, f"{p}attention", world_mpp, "attention", "attention",
                            stride, scale_mode, cohort, "attention")
        layers.append(layer)
    if expl.pathway_maps:
        grids = pathway_grids(expl, stride)
        first = next(iter(grids))
        _, (data, kwargs, kind) = _heatmap(
            expl, expl.pathway_maps[first], f"{p}pathway", world_mpp, "pathway", expl.pathway_map_kind, stride,
            scale_mode, cohort, f"pathway:{first}",
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
            "metadata": {"histokd_kind": "clusters", "clusters": cname, "legend": sizes,
                         "colors": {k: label_color(k) for k in sizes}, "world_mpp": world_mpp},
            **raster.transform(world_mpp).as_kwargs(),
        }, "labels"))
    if expl.memory is not None and len(expl.memory):
        mem = np.asarray(expl.memory, dtype=np.float64)
        rasters = [rasterize(expl.coords, row, expl.patch_size, stride=stride) for row in mem]
        t = rasters[0].transform(world_mpp)
        names = expl.memory_names or [f"component {i}" for i in range(len(mem))]
        scale = _memory_scale(mem, names, scale_mode, cohort)
        grids = np.stack([r.grid for r in rasters]).astype(np.float32)
        layers.append((grids[0], {
            "name": f"{p}memory: {names[0]}",
            "colormap": napari_colormap(scale),
            "contrast_limits": scale.contrast_limits,
            "opacity": map_opacity(scale),
            "blending": "translucent",
            "interpolation2d": "nearest",
            "metadata": {"histokd_kind": "memory", "memory_names": names, "map_kind": "similarity",
                         "memory_grids": grids, "component": 0, "cohort_scales": cohort,
                         "scale": scale_metadata(scale), **_raster_meta(rasters[0], world_mpp)},
            **t.as_kwargs(),
        }, "image"))
    main = next((k for k in MAIN_MAPS for _, kw, _ in layers if kw["metadata"].get("histokd_kind") == k), None)
    for _, kw, _ in layers:
        kw["visible"] = kw["metadata"]["histokd_kind"] == main
    if expl.top_patches:
        top = {name: [int(i) for i in np.asarray(idx).ravel()] for name, idx in expl.top_patches.items()}
        first = _main_top(top, main, layers)
        centres, feats = top_patch_points(expl, top.get(first, []), first, world_mpp)
        layers.append((centres, {
            "name": f"{p}top patches",
            "symbol": "square",
            "size": expl.patch_size * world_mpp,
            "face_color": "transparent",
            "border_color": "cyan",
            "border_width": 0.08,
            "features": feats,
            "text": {"string": "#{rank}", "color": "cyan", "size": 10, "anchor": "upper_left"},
            "metadata": {"histokd_kind": "top_patches", "world_mpp": world_mpp, "top": top, "map": first},
        }, "points"))
    if units is not None:
        for _, kwargs, _ in layers:
            kwargs["units"] = tuple(units)
    return layers


def _memory_scale(mem: np.ndarray, names: list[str], mode: ScaleMode,
                  cohort: dict[str, MapScale] | None) -> MapScale:
    """One similarity scale for every memory component (the layer shows one at a time): the
    slide's over all components, or the widest of the components' cohort scales."""
    if mode != "cohort":
        return map_scale(mem, "similarity", mode)
    widest = max((layer_scale(row, "similarity", mode, f"memory:{n}", cohort) for n, row in zip(names, mem)),
                 key=lambda s: s.high)
    return map_scale(mem, "similarity", mode, widest)


def _main_top(top: dict[str, list[int]], main: str | None, layers: list[LayerData]) -> str:
    """Which map's top patches to show first: the main map's (the top pathway for a pathway map,
    the first component for memory), else the first listed."""
    if main in ("attention", "contribution") and main in top:
        return main
    for _, kw, _ in layers:
        m = kw["metadata"]
        if main == "pathway" and m.get("histokd_kind") == "pathway" and m["pathway"] in top:
            return m["pathway"]
        if main == "memory" and m.get("histokd_kind") == "memory" and m["memory_names"][0] in top:
            return m["memory_names"][0]
    return next(iter(top))


def top_patch_points(expl: Explanation, indices: list[int], name: str, world_mpp: float):
    """World centres ``(k, 2)`` and features (``map``, ``rank``, ``x``, ``y``, ``index``) of the
    ranked top patches of one map."""
    idx = np.asarray(indices, dtype=np.int64)
    centres = patch_centres_world(expl.coords[idx], expl.patch_size, world_mpp) if idx.size else np.zeros((0, 2))
    feats = {"map": [name] * len(idx), "rank": np.arange(1, len(idx) + 1), "x": expl.coords[idx, 0],
             "y": expl.coords[idx, 1], "index": idx}
    return centres, feats


def fine_map_layer(fine, key: str, world_mpp: float, prefix: str = "", units: tuple[str, str] | None = None,
                   scale_mode: ScaleMode = "slide", cohort: dict[str, MapScale] | None = None) -> LayerData:
    """One multiscale image layer of a fine (overlap-averaged) map.

    ``fine`` is a :class:`~histokd_core.workflows.fine_maps.FineMaps`; ``key`` one of its map names
    (``"attention"``, ``"contribution"``, ``"pathway:<name>"``, ``"memory:<component>"``). Attention
    and pathway maps are shown in multiples of uniform over the overlapping patches (their
    attention sums to 1 over them), a contribution in the model's unit per overlapping patch (they
    sum to the output of the overlapping bag minus the bias), memory maps as cosine similarity; the
    pyramid stays lazy (dask), scaled on the fly.
    """
    from histokd_core.workflows.predict_cohort import map_kind

    fmap = fine.maps[key]
    expl = fine.explanation
    n = len(expl.coords)
    kind: MapKind = map_kind(key, expl.pathway_unit)
    if key == "attention":
        per_patch = expl.attention
    elif key == "contribution":
        per_patch = expl.contribution
    elif key.startswith("pathway:"):
        per_patch = expl.pathway_maps[key.split(":", 1)[1]]
    else:
        per_patch = expl.memory[list(expl.memory_names).index(key.split(":", 1)[1])]
    display = to_display(per_patch, kind, n)
    scale = layer_scale(display, kind, scale_mode, key, cohort, map_unit(expl, key, kind))
    factor = float(n) if kind == "attention" else 1.0
    levels = [lvl * np.float32(factor) for lvl in fmap.levels]
    p = f"{prefix} " if prefix else ""
    kwargs = {
        "name": f"{p}{key} (fine, stride {fmap.stride} px)",
        "colormap": napari_colormap(scale),
        "contrast_limits": scale.contrast_limits,
        "multiscale": len(levels) > 1,
        "opacity": map_opacity(scale),
        "blending": "translucent",
        "interpolation2d": "nearest",
        "metadata": {"histokd_kind": "fine", "fine_map": key, "map_kind": kind, "world_mpp": world_mpp,
                     "scale": scale_metadata(scale), "stride_level0": fmap.stride,
                     "downsamples": list(fmap.downsamples), "n_patches": n,
                     "patch_coords": np.asarray(expl.coords), "patch_values": display,
                     "patch_size": int(expl.patch_size)},
        **fmap.transform(world_mpp).as_kwargs(),
    }
    if units is not None:
        kwargs["units"] = tuple(units)
    return (levels if len(levels) > 1 else levels[0]), kwargs, "image"


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
    """The prediction in words: risk (with what it means) or probability, and the group with the
    rule that made it."""
    parts = [method] if method else []
    if expl.risk is not None:
        parts.append(f"risk score {expl.risk:.3f} (the model's log relative hazard: higher means "
                     "shorter expected survival; only its rank among patients matters)")
    if expl.probability is not None:
        parts.append(f"P(positive) {expl.probability:.3f}")
    if expl.risk_group in ("high", "low"):
        side = "above" if expl.risk_group == "high" else "at or below"
        parts.append(f"group: {expl.risk_group} risk ({side} the median risk of the fold's test cases)")
    elif expl.risk_group:
        rule = " (P(positive) >= 0.5)" if expl.risk_group == "positive" else \
            " (P(positive) < 0.5)" if expl.risk_group == "negative" else ""
        parts.append(f"group: {expl.risk_group}{rule}")
    else:
        parts.append("group: n/a (the run left no test predictions to split at)")
    return "\n".join(parts)
