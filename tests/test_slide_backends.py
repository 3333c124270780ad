"""OpenSlide and wsidicom backends: pixel equality against the source and the other backend,
lazy tile-aligned reads, mpp and associated images, clear errors for damaged files."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import tifffile
from conftest import CMU_SVS, planted_label
from PIL import Image

from histokd_core.errors import SlideError
from histokd_core.slide import MissingMppWarning, open_slide
from histokd_core.slide.backends import RegionArray, choose_backend, rgba_to_rgb
from histokd_core.slide.pyramid import as_rgb_level
from histokd_core.synthetic.mirax import write_mirax

TCGA = "slides/TCGA-CR-7395-01A-01-TS1.svs"


def _open_quiet(path, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MissingMppWarning)
        return open_slide(path, **kwargs)


# -- MIRAX through OpenSlide ------------------------------------------------------------------


def test_mirax_is_read_by_openslide_and_equals_the_source_on_every_level(mirax_cmu):
    with open_slide(mirax_cmu.path) as slide:
        assert slide.backend == "openslide" and slide.vendor == "mirax"
        assert slide.native_level_count == 3
        assert slide.level_dimensions == list(mirax_cmu.level_dimensions)
        assert slide.level_downsamples == [1.0, 2.0, 4.0]
        assert slide.mpp == pytest.approx(0.499) and slide.mpp_source == "metadata"
        assert slide.magnification == 20 and not slide.magnification_estimated
        for level, expect in enumerate(mirax_cmu.level_images):
            np.testing.assert_array_equal(slide.levels[level].compute(), expect)
        # ... which are the real CMU pixels at level 0
        assert slide.read_region((700, 900), 0, (300, 200)).mean() < 250  # tissue, not fill


def test_mirax_level0_equals_the_real_svs_read_by_tiffslide(mirax_cmu, shared_data):
    with open_slide(mirax_cmu.path) as mrxs, open_slide(shared_data / CMU_SVS) as svs:
        assert svs.backend == "tiffslide"
        for loc in [(0, 0), (517, 333), (1700, 2600)]:
            np.testing.assert_array_equal(
                mrxs.read_region(loc, 0, (300, 211)), svs.read_region(loc, 0, (300, 211))
            )


def test_jpeg_mirax_equals_an_independent_decode_of_its_tiles(tmp_path, cmu_level0):
    image = cmu_level0[:1024, :1536]
    written = write_mirax(tmp_path / "jpeg.mrxs", image, mpp=0.25, n_levels=2, quality=80)
    with open_slide(written.path) as slide:
        for level in range(2):
            got = slide.levels[level].compute()
            expect = np.zeros_like(got)
            for (i, j), blob in written.encoded[level].items():
                tile = np.asarray(Image.open(io.BytesIO(blob)))
                y0, x0 = (j >> level) * 256, (i >> level) * 256
                part = expect[y0 : y0 + 256, x0 : x0 + 256]
                part[...] = tile[: part.shape[0], : part.shape[1]]
            np.testing.assert_array_equal(got, expect, err_msg=f"level {level}")
        assert slide.mpp == 0.25


def test_openslide_levels_decode_only_the_tiles_under_a_view(mirax_cmu):
    with open_slide(mirax_cmu.path) as slide:
        level0 = slide.levels[0]
        assert level0.chunksize[:2] == (1024, 1024)  # 4 x 4 camera images of 256 px
        region_array = slide._source.arrays[0]
        calls = []
        read = region_array._read

        def counting(x, y, w, h):
            calls.append((x, y, w, h))
            return read(x, y, w, h)

        region_array._read = counting
        level0[1100:1150, 1030:1090].compute()
        assert calls == [(1030, 1100, 60, 50)]  # dask pushes the window into the read
        calls.clear()
        level0.blocks[1, 1].compute()
        assert calls == [(1024, 1024, 1024, 1024)]  # one tile-aligned chunk, not the level


def test_region_array_reads_exactly_the_slice_asked_for():
    source = np.random.default_rng(0).integers(0, 255, (300, 500, 3), dtype=np.uint8)
    calls = []

    def read(x, y, w, h):
        calls.append((x, y, w, h))
        return source[y : y + h, x : x + w]

    array = RegionArray((300, 500), (64, 128), read)
    level = as_rgb_level(array)
    assert level.chunksize == (256, 512, 3) or level.chunksize[:2] == (300, 500)
    np.testing.assert_array_equal(level.compute(), source)
    np.testing.assert_array_equal(array[10:20, 30:35], source[10:20, 30:35])
    assert calls[-1] == (30, 10, 5, 10)
    # indexed as numpy indexes (the same reader as a tiled TIFF level): ints, steps, ...
    np.testing.assert_array_equal(array[5, 30:35], source[5, 30:35])
    np.testing.assert_array_equal(array[10:40:3, ..., 0], source[10:40:3, ..., 0])
    assert calls[-1] == (0, 10, 500, 30)  # one read of the selection's box
    n = len(calls)
    assert array[20:10, 3:7].shape == (0, 4, 3) and len(calls) == n  # empty: nothing read


def test_rgba_compositing_keeps_opaque_pixels_and_fills_transparent_ones():
    rgba = np.array([[[10, 20, 30, 255], [0, 0, 0, 0], [64, 0, 0, 128]]], dtype=np.uint8)
    got = rgba_to_rgb(rgba, background=(255, 255, 255))
    assert got[0, 0].tolist() == [10, 20, 30]
    assert got[0, 1].tolist() == [255, 255, 255]
    # premultiplied half-transparent red over white: 64 + 127/255*255 = 191
    assert got[0, 2].tolist() == [191, 127, 127]


def test_mirax_associated_images(mirax_cmu):
    with open_slide(mirax_cmu.path) as slide:
        assert slide.associated_images == ["label", "macro"]
        label = slide.associated_image("label")
        assert label.shape == (120, 300, 3)
        assert np.abs(label.astype(int) - planted_label()).mean() < 3  # stored as JPEG
        assert slide.associated_image("macro").shape == (352, 256, 3)
        with pytest.raises(SlideError, match="no associated image 'thumbnail'"):
            slide.associated_image("thumbnail")


# -- the real SVS slides through OpenSlide, against tiffslide --------------------------------


@pytest.mark.parametrize("name", [CMU_SVS, TCGA])
def test_openslide_and_tiffslide_agree_on_the_real_svs_slides(name, shared_data):
    path = shared_data / name
    a = _open_quiet(path, backend="openslide")
    b = _open_quiet(path)
    with a, b:
        assert (a.backend, b.backend) == ("openslide", "tiffslide")
        assert a.level_dimensions == b.level_dimensions
        assert a.mpp == b.mpp and a.magnification == b.magnification
        assert a.tile_size == b.tile_size
        np.testing.assert_array_equal(a.levels[0].compute(), b.levels[0].compute())
        assert set(b.associated_images) <= set(a.associated_images)
        for level in range(1, a.native_level_count):
            # OpenSlide takes level-0 coordinates; at TCGA's downsample of 2.0005 a read that
            # does not start at 0 is resampled by under half a pixel (documented limitation)
            got = a.levels[level].compute().astype(int)
            expect = b.levels[level].compute().astype(int)
            np.testing.assert_array_equal(got[:256, :256], expect[:256, :256])
            assert np.abs(got - expect).mean() < 3.0


# -- DICOM WSI through wsidicom ---------------------------------------------------------------


def test_dicom_wsi_made_by_wsidicomizer_equals_the_svs_pixel_for_pixel(dicom_cmu, cmu_level0):
    files = sorted(dicom_cmu.glob("*.dcm"))
    assert len(files) == 4  # level 0, label, overview, thumbnail
    for path in (dicom_cmu, files[0]):  # the folder, or any one instance of it
        with open_slide(path) as slide:
            assert slide.backend == "wsidicom" and choose_backend(path) == "wsidicom"
            assert slide.path == dicom_cmu  # the folder, whichever .dcm was opened
            assert slide.native_level_count == 1 and slide.dimensions == (2220, 2967)
            assert slide.mpp == pytest.approx(0.499)  # from the pixel spacing, mm -> um
            assert slide.tile_size == (960, 960)  # 4 x 4 tiles of 240 px, as the SVS
            np.testing.assert_array_equal(slide.levels[0].compute(), cmu_level0)
            np.testing.assert_array_equal(
                slide.read_region((1234, 2345), 0, (300, 200)),
                cmu_level0[2345:2545, 1234:1534],
            )


def test_openslide_reads_the_dicom_wsi_like_wsidicom(dicom_cmu):
    level0_file = max(dicom_cmu.glob("*.dcm"), key=lambda p: p.stat().st_size)
    with open_slide(level0_file, backend="openslide") as a, open_slide(dicom_cmu) as b:
        assert (a.backend, a.vendor, b.backend) == ("openslide", "dicom", "wsidicom")
        assert a.level_dimensions == b.level_dimensions and a.mpp == b.mpp
        np.testing.assert_array_equal(a.levels[0].compute(), b.levels[0].compute())


def test_dicom_associated_images_match_the_svs(dicom_cmu, shared_data):
    with open_slide(dicom_cmu) as dcm, open_slide(shared_data / CMU_SVS) as svs:
        assert dcm.associated_images == ["label", "macro"]
        for name in ("label", "macro"):
            a, b = dcm.associated_image(name), svs.associated_image(name)
            assert a.shape == b.shape  # the same picture, re-encoded as JPEG by wsidicomizer
            assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.98


def test_multilevel_dicom_levels_are_lazy_and_tile_aligned(tmp_path, shared_data):
    from wsidicomizer import WsiDicomizer

    folder = tmp_path / "levels"
    WsiDicomizer.convert(
        shared_data / CMU_SVS, folder, add_missing_levels=True, include_label=False,
        include_overview=False, include_thumbnail=False, tile_size=256,
    )
    import wsidicom

    with open_slide(folder) as slide, wsidicom.WsiDicom.open(folder) as wsi:
        assert slide.native_level_count == len(wsi.levels) >= 3
        for i, level in enumerate(wsi.levels):
            size = level.size
            assert slide.level_dimensions[i] == (size.width, size.height)
            chunk = slide.levels[i].chunksize[0]
            assert chunk == size.height or chunk % level.tile_size.height == 0
            w, h = min(300, size.width - 7), min(200, size.height - 5)
            expect = np.asarray(wsi.read_region((7, 5), level.level, (w, h)))
            np.testing.assert_array_equal(slide.levels[i][5 : 5 + h, 7 : 7 + w].compute(), expect)
        assert slide.mpp == pytest.approx(0.499)
        assert slide.level_downsamples[1] == pytest.approx(2.0, abs=2e-3)


# -- choosing the backend, and errors ---------------------------------------------------------


def test_backend_choice(tmp_path, shared_data, mirax_cmu, dicom_cmu):
    assert choose_backend(shared_data / CMU_SVS) == "tiffslide"
    assert choose_backend(mirax_cmu.path) == "openslide"
    assert choose_backend(dicom_cmu) == "wsidicom"
    assert choose_backend(shared_data / CMU_SVS, "openslide") == "openslide"
    with pytest.raises(SlideError, match="unknown slide backend 'bioformats'"):
        choose_backend(shared_data / CMU_SVS, "bioformats")


def _copy_mirax(src, dst_dir):
    import shutil

    shutil.copy(src.path, dst_dir / src.path.name)
    shutil.copytree(src.path.with_suffix(""), dst_dir / src.path.stem)
    return dst_dir / src.path.name


@pytest.mark.parametrize("damage", ["truncated data", "garbage index", "no folder", "bad ini"])
def test_damaged_mirax_raises_slide_error_naming_the_file(damage, mirax_cmu, tmp_path):
    path = _copy_mirax(mirax_cmu, tmp_path)
    folder = path.with_suffix("")
    if damage == "truncated data":
        data = (folder / "Data0000.dat").read_bytes()
        (folder / "Data0000.dat").write_bytes(data[: len(data) // 3])
    elif damage == "garbage index":
        (folder / "Index.dat").write_bytes(b"01.02" + bytes(range(256)))
    elif damage == "no folder":
        import shutil

        shutil.rmtree(folder)
    else:
        (folder / "Slidedat.ini").write_text("[GENERAL]\nIMAGENUMBER_X = x\n")
    with pytest.raises(SlideError) as info:
        open_slide(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("damage", ["truncated", "empty folder", "garbage dcm"])
def test_damaged_dicom_raises_slide_error_naming_the_file(damage, dicom_cmu, tmp_path):
    import shutil

    folder = tmp_path / "dcm"
    if damage == "empty folder":
        folder.mkdir()
    else:
        shutil.copytree(dicom_cmu, folder)
        biggest = max(folder.glob("*.dcm"), key=lambda p: p.stat().st_size)
        data = biggest.read_bytes()
        if damage == "truncated":
            biggest.write_bytes(data[: len(data) // 2])
        else:
            for other in folder.glob("*.dcm"):
                other.write_bytes(data[:132] + bytes(range(256)) * 8)
    with pytest.raises(SlideError) as info:
        open_slide(folder)
    assert str(folder) in str(info.value)


def test_forcing_openslide_on_a_dicom_folder_is_a_clear_error(dicom_cmu):
    with pytest.raises(SlideError, match="not a file"):
        open_slide(dicom_cmu, backend="openslide")


def test_tiff_header_check_still_applies_to_tiffslide(tmp_path):
    path = tmp_path / "x.svs"
    tifffile.imwrite(path, np.zeros((16, 16, 3), np.uint8), photometric="rgb")
    path.write_bytes(path.read_bytes()[:10])
    with pytest.raises(SlideError, match="truncated"):
        open_slide(path)
