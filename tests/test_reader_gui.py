"""napari reader, sample data and patch-grid overlay (GUI tests run under Xvfb)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from histokd_core.slide import box_world, open_slide
from histokd_core.synthetic import PlantedRegion, write_synthetic_slide
from napari_histokd._reader import get_slide_reader, read_slides, slide_layer_data
from napari_histokd._widgets.patch_grid import compute_patch_grid, grid_layer_data

REGION = PlantedRegion("immune", y0=900, x0=1300, y1=1700, x1=2400)
MPP = 0.5


@pytest.fixture(scope="module")
def region_slide(tmp_path_factory):
    path = tmp_path_factory.mktemp("gui") / "region.tif"
    return write_synthetic_slide(
        path, (3072, 4096), mpp=MPP, regions=[REGION], seed=4, tissue=False, workers=1
    )


def test_reader_declines_what_it_cannot_read(tmp_path):
    png = tmp_path / "image.svs"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    assert get_slide_reader(str(png)) is None  # not a TIFF: leave it to other readers
    assert get_slide_reader(str(txt)) is None
    assert get_slide_reader(str(tmp_path)) is None
    assert get_slide_reader([]) is None


def test_reader_layer_data_is_multiscale_in_microns(region_slide):
    reader = get_slide_reader(str(region_slide.path))
    assert reader is read_slides
    [(data, kwargs, kind)] = reader(str(region_slide.path))
    assert kind == "image" and kwargs["multiscale"] and kwargs["rgb"]
    assert kwargs["scale"] == (MPP, MPP)
    assert [d.shape[:2] for d in data] == [(h, w) for w, h in region_slide.level_dimensions]
    assert kwargs["metadata"]["mpp"] == MPP and kwargs["metadata"]["path"] == str(region_slide.path)


def test_reader_raises_a_clear_error_for_an_empty_slide(tmp_path):
    from histokd_core.errors import SlideError

    empty = tmp_path / "empty.svs"
    empty.write_bytes(b"")
    reader = get_slide_reader(str(empty))
    with pytest.raises(SlideError, match="empty"):
        reader(str(empty))


def test_missing_mpp_layer_is_in_pixels_and_flagged(shared_data):
    with pytest.warns(UserWarning, match="mpp"):
        slide = open_slide(shared_data / "slides" / "TCGA-CR-7395-01A-01-TS1.svs")
    _, kwargs, _ = slide_layer_data(slide)
    assert kwargs["scale"] == (1.0, 1.0) and kwargs["metadata"]["mpp_missing"] is True


def test_grid_layer_points_lie_on_the_planted_region(region_slide):
    """Without a viewer: every patch square's footprint overlaps the region, in world units."""
    grid = compute_patch_grid(str(region_slide.path), None, 0.5, 128, 0.5)
    centres, kwargs, kind = grid_layer_data(grid)
    assert kind == "points" and kwargs["size"] == 128 * MPP
    corners = box_world(REGION.x0, REGION.y0, REGION.x1, REGION.y1, MPP)
    (top, left), (bottom, right) = corners[0], corners[2]
    assert (centres[:, 0] > top).all() and (centres[:, 0] < bottom).all()
    assert (centres[:, 1] > left).all() and (centres[:, 1] < right).all()


@pytest.mark.gui
def test_viewer_opens_slide_with_world_extent_and_renders(
    make_napari_viewer, region_slide, shared_data
):
    viewer = make_napari_viewer(show=True)
    [layer] = viewer.open(str(region_slide.path), plugin="napari-histokd")
    assert layer.multiscale and layer.rgb
    h, w = region_slide.size_hw
    # napari's extent spans pixel centres; one step more gives the full footprint
    extent = np.asarray(layer.extent.world)
    step = np.asarray(layer.extent.step)
    np.testing.assert_allclose(step, [MPP, MPP])
    np.testing.assert_allclose(extent[1] - extent[0] + step, [h * MPP, w * MPP])
    np.testing.assert_allclose(extent[0], [0, 0])
    viewer.reset_view()
    shot = viewer.screenshot(canvas_only=True, flash=False)
    if os.environ.get("HISTOKD_SAVE_SCREENSHOT"):
        from PIL import Image

        Image.fromarray(shot[..., :3]).save(os.environ["HISTOKD_SAVE_SCREENSHOT"])
    assert shot.ndim == 3 and shot[..., :3].std() > 5, "screenshot is blank"
    # the planted region is drawn purple, at its place relative to the slide's footprint
    rgb = shot[..., :3].astype(int)
    footprint = rgb.sum(-1) > 60  # the canvas around the slide is black
    tissue = footprint & (rgb.sum(-1) < 600)  # glass is near white
    assert rgb[tissue][:, 2].mean() > rgb[tissue][:, 1].mean() + 20  # purple/pink, not grey
    fy, fx = np.nonzero(footprint)
    ty, tx = np.nonzero(tissue)
    rel_y = (np.array([ty.min(), ty.max() + 1]) - fy.min()) / (fy.max() + 1 - fy.min())
    rel_x = (np.array([tx.min(), tx.max() + 1]) - fx.min()) / (fx.max() + 1 - fx.min())
    np.testing.assert_allclose(rel_y, [REGION.y0 / h, REGION.y1 / h], atol=0.02)
    np.testing.assert_allclose(rel_x, [REGION.x0 / w, REGION.x1 / w], atol=0.02)

    cmu_path = shared_data / "slides" / "CMU-1-Small-Region.svs"
    [cmu] = viewer.open(str(cmu_path), plugin="napari-histokd")
    assert cmu.multiscale and len(cmu.data) == 3  # single-level SVS + lazy overview levels
    cmu_extent = np.diff(np.asarray(cmu.extent.world), axis=0)[0] + np.asarray(cmu.extent.step)
    np.testing.assert_allclose(cmu_extent, [2967 * 0.499, 2220 * 0.499])


@pytest.mark.gui
def test_patch_grid_widget_overlay_lands_on_planted_region(make_napari_viewer, qtbot, region_slide):
    from napari_histokd._widgets.patch_grid import PatchGridWidget

    viewer = make_napari_viewer()
    [slide_layer] = viewer.open(str(region_slide.path), plugin="napari-histokd")
    widget = PatchGridWidget(viewer)
    assert widget.layer_combo.currentText() == slide_layer.name
    widget.patch_px.setValue(128)
    assert widget.start() is not None
    # wait for the result, not the finished signal (a worker can finish before a later waitSignal
    # connects)
    qtbot.waitUntil(lambda: f"{slide_layer.name} patches" in viewer.layers, timeout=60_000)
    points = viewer.layers[f"{slide_layer.name} patches"]
    world = np.asarray([points.data_to_world(p) for p in points.data])
    assert len(world) > 0
    # map the squares' world centres into the slide layer's data (level-0 px) coordinates
    level0 = np.asarray([slide_layer.world_to_data(p) for p in world])
    y, x = level0[:, 0], level0[:, 1]
    assert ((y >= REGION.y0) & (y < REGION.y1) & (x >= REGION.x0) & (x < REGION.x1)).all()
    # the patches tile the region: their footprints cover most of it
    covered = len(world) * 128**2
    area = (REGION.y1 - REGION.y0) * (REGION.x1 - REGION.x0)
    assert 0.8 * area < covered < 1.3 * area
    assert "patches" in widget.status.text()
    widget.close()


@pytest.mark.gui
def test_sample_data_opens_with_planted_regions(make_napari_viewer, tmp_path, monkeypatch):
    monkeypatch.setenv("HISTOKD_CACHE", str(tmp_path))
    viewer = make_napari_viewer()
    layers = viewer.open_sample("napari-histokd", "synthetic_slide")
    slide, regions = layers
    assert slide.multiscale and slide.metadata["mpp"] == 0.5
    assert len(regions.data) == 2 and set(regions.features["kind"]) == {"tumor", "immune"}
    assert list(tmp_path.glob("samples/*.tif"))
