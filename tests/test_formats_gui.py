"""napari opens every format as one multiscale layer in microns; associated images on request,
with the label withheld under de-identification (GUI tests run under Xvfb)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import CMU_SVS

from histokd_core.errors import SlideError
from histokd_core.slide import open_slide
from histokd_core.slide.associated import DEIDENTIFY_ENV, displayable, read_for_display
from napari_histokd._reader import get_slide_reader, read_slides


def _format_paths(shared_data, mirax_cmu, dicom_cmu):
    return {
        "svs": shared_data / CMU_SVS,
        "mrxs": mirax_cmu.path,
        "dicom folder": dicom_cmu,
        "dcm file": sorted(dicom_cmu.glob("*.dcm"))[0],
    }


def test_reader_claims_each_format_and_gives_one_multiscale_layer_in_microns(
    shared_data, mirax_cmu, dicom_cmu
):
    for kind, path in _format_paths(shared_data, mirax_cmu, dicom_cmu).items():
        reader = get_slide_reader(str(path))
        assert reader is read_slides, kind
        [(data, kwargs, layer_type)] = reader(str(path))
        assert layer_type == "image" and kwargs["rgb"] and kwargs["multiscale"], kind
        assert kwargs["scale"] == (0.499, 0.499) and kwargs["units"] == ("um", "um"), kind
        assert data[0].shape[:2] == (2816, 2048) if kind == "mrxs" else (2967, 2220)
        assert [d.shape[0] for d in data] == sorted((d.shape[0] for d in data), reverse=True)
        if kind.startswith("dc"):
            assert kwargs["name"] == "CMU-1" and kwargs["metadata"]["path"] == str(dicom_cmu)


def test_reader_declines_folders_and_dcm_files_that_are_not_dicom(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    fake = tmp_path / "fake.dcm"
    fake.write_bytes(b"not dicom")
    assert get_slide_reader(str(tmp_path)) is None
    assert get_slide_reader(str(fake)) is None


def test_deidentification_withholds_the_label_before_reading_it(mirax_cmu, monkeypatch):
    with open_slide(mirax_cmu.path) as slide:
        names = slide.associated_images
        assert displayable(names, deidentify=True) == ["macro"]
        assert displayable(names, deidentify=False) == ["label", "macro"]
        slide._source.associated["label"] = lambda: pytest.fail("the label was read")
        with pytest.raises(SlideError, match="de-identification is on"):
            read_for_display(slide, "label", deidentify=True)
        monkeypatch.setenv(DEIDENTIFY_ENV, "1")  # the site lock wins over the argument
        assert displayable(names, deidentify=False) == ["macro"]
        with pytest.raises(SlideError, match=DEIDENTIFY_ENV):
            read_for_display(slide, "label", deidentify=False)


@pytest.mark.gui
def test_viewer_opens_mirax_and_dicom_and_renders_tissue(
    make_napari_viewer, shared_data, mirax_cmu, dicom_cmu
):
    viewer = make_napari_viewer(show=True)
    shots = {}
    for kind, path in _format_paths(shared_data, mirax_cmu, dicom_cmu).items():
        viewer.layers.clear()
        [layer] = viewer.open(str(path), plugin="napari-histokd")
        assert layer.multiscale and layer.rgb
        np.testing.assert_allclose(layer.scale, [0.499, 0.499])
        assert layer.metadata["backend"] == {
            "svs": "tiffslide", "mrxs": "openslide"
        }.get(kind, "wsidicom")
        viewer.reset_view()
        shot = viewer.screenshot(canvas_only=True, flash=False)[..., :3]
        save = os.environ.get("HISTOKD_SAVE_SCREENSHOT_DIR")
        if save:
            from PIL import Image

            Image.fromarray(shot).save(os.path.join(save, f"format_{kind.replace(' ', '_')}.png"))
        rgb = shot.astype(int)
        tissue = (rgb.sum(-1) > 60) & (rgb.sum(-1) < 600)
        assert tissue.mean() > 0.05, f"{kind}: no tissue drawn"
        assert rgb[tissue][:, 2].mean() > rgb[tissue][:, 1].mean() + 10  # H&E pink/purple
        shots[kind] = shot
    # the DICOM conversion is lossless: the same view renders identically
    assert np.array_equal(shots["svs"], shots["dicom folder"])


@pytest.mark.gui
def test_slide_images_widget_shows_macro_and_withholds_label(
    make_napari_viewer, qtbot, mirax_cmu, monkeypatch
):
    from napari_histokd._widgets.slide_images import SlideImagesWidget

    monkeypatch.delenv(DEIDENTIFY_ENV, raising=False)
    viewer = make_napari_viewer()
    [slide_layer] = viewer.open(str(mirax_cmu.path), plugin="napari-histokd")
    widget = SlideImagesWidget(viewer)
    assert widget.layer_combo.currentText() == slide_layer.name
    assert widget.deidentify.isChecked()  # on by default
    assert not widget.buttons["label"].isEnabled()
    assert widget.buttons["macro"].isEnabled()
    assert not widget.buttons["thumbnail"].isEnabled()  # this slide has none

    # wait for what the worker does, not for its finished signal: a fast read can finish before
    # a waitSignal entered after show_image() connects, and the signal is then missed
    assert widget.show_image("macro") is not None
    qtbot.waitUntil(lambda: f"{slide_layer.name} macro" in viewer.layers, timeout=30_000)
    macro = viewer.layers[f"{slide_layer.name} macro"]
    slide_right = slide_layer.extent.world[1][-1]
    assert macro.extent.world[0][-1] > slide_right  # beside the slide, not over the tissue
    np.testing.assert_allclose(
        macro.extent.world[1][-2] - macro.extent.world[0][-2],
        slide_layer.extent.world[1][-2] - slide_layer.extent.world[0][-2],
        rtol=0.01,
    )

    # asking for the label anyway (e.g. programmatically) is refused, nothing is added
    assert widget.show_image("label") is not None
    qtbot.waitUntil(lambda: "de-identification is on" in widget.status.text(), timeout=30_000)
    assert f"{slide_layer.name} label" not in viewer.layers

    widget.deidentify.setChecked(False)
    assert widget.buttons["label"].isEnabled()
    assert widget.show_image("label") is not None
    qtbot.waitUntil(lambda: f"{slide_layer.name} label" in viewer.layers, timeout=30_000)
    assert viewer.layers[f"{slide_layer.name} label"].data.shape == (120, 300, 3)
    widget.close()


@pytest.mark.gui
def test_site_lock_disables_the_deidentification_switch(make_napari_viewer, mirax_cmu, monkeypatch):
    from napari_histokd._widgets.slide_images import SlideImagesWidget

    monkeypatch.setenv(DEIDENTIFY_ENV, "1")
    viewer = make_napari_viewer()
    viewer.open(str(mirax_cmu.path), plugin="napari-histokd")
    widget = SlideImagesWidget(viewer)
    assert not widget.deidentify.isEnabled()
    widget.deidentify.setChecked(False)  # even if something unticks it
    assert not widget.buttons["label"].isEnabled()
    widget.close()
