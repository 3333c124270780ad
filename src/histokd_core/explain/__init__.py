"""Per-patch model outputs -> grids aligned to the slide, cluster maps and regions."""

from histokd_core.explain.fine import FineMap, fine_map, heatmap_grid
from histokd_core.explain.labels import cluster_sizes, label_color, rasterize_labels
from histokd_core.explain.raster import PatchRaster, is_lattice, rasterize
from histokd_core.explain.regions import Region, mean_in_polygon, threshold_regions

__all__ = [
    "FineMap",
    "PatchRaster",
    "Region",
    "cluster_sizes",
    "fine_map",
    "heatmap_grid",
    "is_lattice",
    "label_color",
    "mean_in_polygon",
    "rasterize",
    "rasterize_labels",
    "threshold_regions",
]
