"""Stain normalisation: references against planted stain vectors and independent LAB statistics,
the planted per-site shift, and the extraction option (reference once per cohort, in the attrs)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import CMU_SVS

from histokd_core.errors import DataError
from histokd_core.features import extract_slide, get_encoder, open_features
from histokd_core.features.stain import (
    REFERENCE_FILE,
    StainNormalizer,
    StainReference,
    cohort_reference,
    fit_pixel_count,
    fit_reference,
    tissue_fraction,
)
from histokd_core.synthetic import PlantedRegion, write_synthetic_slide
from histokd_core.synthetic.stain import EOSIN, HEMATOXYLIN, StainShift, restain, write_restained_slide


@pytest.fixture(scope="module")
def cmu_tiles(cmu_level0):
    """Six 256-px tiles of the real CMU slide, each at least half tissue."""
    spots = [(768, 1024), (768, 1280), (1024, 1024), (1792, 1024), (2048, 768), (2560, 512)]
    return np.stack([cmu_level0[y : y + 256, x : x + 256] for y, x in spots])


def _planted_image(h_vec, e_vec, seed=0, size=128):
    """RGB from known unit OD vectors and random concentrations (Beer-Lambert, Io = 240)."""
    rng = np.random.default_rng(seed)
    c = np.stack([rng.gamma(2.0, 0.4, size * size), rng.gamma(2.0, 0.3, size * size)], axis=1)
    c[rng.random(size * size) < 0.5, 0] *= 0.05  # nuclei-poor and eosin-poor pixels, as in H&E
    c[rng.random(size * size) < 0.3, 1] *= 0.05
    od = c @ np.stack([h_vec, e_vec])
    return np.clip(240 * np.exp(-od), 0, 255).astype(np.uint8).reshape(size, size, 3)


def test_macenko_fit_recovers_planted_stain_vectors():
    h = HEMATOXYLIN / np.linalg.norm(HEMATOXYLIN)
    e = EOSIN / np.linalg.norm(EOSIN)
    ref = fit_reference(_planted_image(h, e)[None], "macenko")
    he = np.asarray(ref.params["HERef"])  # columns H, E
    assert he.shape == (3, 2)
    assert np.dot(he[:, 0], h) / np.linalg.norm(he[:, 0]) > 0.99
    assert np.dot(he[:, 1], e) / np.linalg.norm(he[:, 1]) > 0.99


def test_reinhard_output_has_the_reference_lab_statistics(cmu_tiles):
    from skimage.color import rgb2lab

    ref = fit_reference(cmu_tiles[:3], "reinhard")
    shifted = restain(cmu_tiles[4], StainShift.tilted(0.8))
    before = rgb2lab(shifted).reshape(-1, 3).mean(axis=0)
    assert np.abs(before - ref.params["means"]).max() > 8  # the shift moved the colours
    out = StainNormalizer(ref)(shifted)
    lab = rgb2lab(out).reshape(-1, 3)  # skimage's conversion, independent of torchstain's
    # within rounding/clipping to uint8 RGB and the two libraries' LAB constants
    assert np.abs(lab.mean(axis=0) - ref.params["means"]).max() <= 2.5
    np.testing.assert_allclose(lab.std(axis=0), ref.params["stds"], rtol=0.15)


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_normalisation_removes_most_of_a_planted_stain_shift(method, cmu_tiles):
    shifted = restain(cmu_tiles, StainShift.tilted(1.0))
    norm = StainNormalizer(fit_reference(cmu_tiles, method))
    before = np.abs(cmu_tiles.astype(int) - shifted).mean()
    after = np.abs(
        np.stack([norm(t) for t in cmu_tiles]).astype(int)
        - np.stack([norm(t) for t in shifted])
    ).mean()
    assert norm.n_unchanged == 0
    assert after < 0.6 * before, (before, after)


def test_glass_tiles_are_left_unchanged_and_counted(cmu_tiles):
    glass = np.full((64, 64, 3), 236, np.uint8)
    assert tissue_fraction(glass) == 0.0 and tissue_fraction(cmu_tiles[1]) > 0.5
    norm = StainNormalizer(fit_reference(cmu_tiles, "macenko"))
    assert norm(glass) is glass and norm.n_unchanged == 1


def _pale_eosin_tile(seed=0, size=128):
    """Pale eosin-stained tissue with a few nuclei (Ruifrok vectors, Io = 240): red OD < 0.15
    off the nuclei, as in the pink stroma of the synthetic slides."""
    rng = np.random.default_rng(seed)
    h = HEMATOXYLIN / np.linalg.norm(HEMATOXYLIN)
    e = EOSIN / np.linalg.norm(EOSIN)
    c = np.stack([np.zeros(size * size), rng.uniform(0.3, 1.2, size * size)], axis=1)
    nuclei = rng.random(size * size) < 0.04
    c[nuclei, 0] = rng.uniform(0.8, 1.5, nuclei.sum())
    od = c @ np.stack([h, e])
    return np.clip(240 * np.exp(-od), 0, 255).astype(np.uint8).reshape(size, size, 3)


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_pale_eosin_tiles_are_normalised_not_taken_for_glass(method, cmu_tiles):
    tile = _pale_eosin_tile()
    pixels = tile.shape[0] * tile.shape[1]
    # stained in every channel (the fit's pixels): nuclei only; tissue in some channel: all
    assert fit_pixel_count(tile) < 0.1 * pixels and tissue_fraction(tile) > 0.99
    norm = StainNormalizer(fit_reference(cmu_tiles, method))
    out = norm(tile)
    assert norm.n_unchanged == 0
    assert np.abs(out.astype(int) - tile).mean() > 3  # changed towards the reference
    # the same tissue re-stained by another site is normalised too, and the two sites'
    # normalised tiles are closer than the tiles as scanned
    shifted = restain(tile, StainShift.tilted(1.0))
    out_shifted = norm(shifted)
    assert norm.n_unchanged == 0
    before = np.abs(tile.astype(int) - shifted).mean()
    assert np.abs(out.astype(int) - out_shifted).mean() < 0.8 * before


def test_restain_identity_and_a_hand_computed_pixel():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)
    np.testing.assert_array_equal(restain(image, StainShift()), image)
    # doubling haematoxylin doubles the H part of a pure-haematoxylin pixel's optical density
    h = HEMATOXYLIN / np.linalg.norm(HEMATOXYLIN)
    pixel = np.clip(np.rint(256 * np.exp(-0.5 * h) - 1), 0, 255).astype(np.uint8)
    expect = np.clip(np.rint(256 * np.exp(-1.0 * h) - 1), 0, 255)
    got = restain(pixel[None], StainShift(h_gain=2.0))[0]
    assert np.abs(got.astype(int) - expect).max() <= 2


def test_restain_leaves_glass_of_intensity_io_as_it_is():
    glass = np.full((1, 2, 3), 240, np.uint8)
    shift = StainShift.tilted(1.0)
    assert np.abs(restain(glass, shift, io=240).astype(int) - 240).max() <= 1
    assert np.abs(restain(glass, shift).astype(int) - 240).max() > 5  # io 256: glass is stained


def test_reference_round_trip_and_validation():
    ref = StainReference("reinhard", {"means": [70.0, 15.0, -8.0], "stds": [25.0, 12.0, 9.0]}, 9, "x")
    again = StainReference.from_attrs(json.loads(json.dumps(ref.to_attrs())))
    assert again == ref and again.id == ref.id and ref.id.startswith("reinhard:")
    with pytest.raises(DataError, match="shape"):
        StainReference.from_attrs({"method": "macenko", "params": {"HERef": [1, 2], "maxCRef": [1, 1]}})
    with pytest.raises(DataError, match="unknown"):
        StainReference.from_attrs({"method": "vahadane", "params": {}})


@pytest.fixture(scope="module")
def two_sites(tmp_path_factory):
    """One synthetic slide and the same slide re-stained as another site would."""
    folder = tmp_path_factory.mktemp("sites")
    region = PlantedRegion("tumor", 200, 300, 600, 700)
    a = write_synthetic_slide(folder / "site_a.tif", (768, 1024), mpp=0.5, regions=[region], seed=5, workers=1)
    b = write_restained_slide(a.path, folder / "site_b.tif", StainShift.tilted(1.0))
    return a.path, b


def test_restained_slide_keeps_geometry_and_mpp(two_sites):
    from histokd_core.slide import open_slide

    with open_slide(two_sites[0]) as a, open_slide(two_sites[1]) as b:
        assert a.level_dimensions[0] == b.level_dimensions[0] and b.mpp == a.mpp
        assert b.native_level_count >= 3
        diff = np.abs(a.levels[0].compute().astype(int) - b.levels[0].compute()).mean()
        assert diff > 5  # visibly re-stained


def test_extract_with_stain_stores_the_cohort_reference_and_refuses_to_mix(two_sites, tmp_path):
    encoder = get_encoder("hed-texture")
    root = tmp_path / "feats"
    ref = cohort_reference(two_sites, "macenko", root, per_slide=8)
    assert json.loads((root / REFERENCE_FILE).read_text())["id"] == ref.id
    assert cohort_reference(two_sites, "macenko", root) == ref  # fitted once, then reused
    with pytest.raises(DataError, match="macenko"):
        cohort_reference(two_sites, "reinhard", root)
    for path in two_sites:
        extract_slide(path, root, encoder, magnifications=("20x",), num_workers=0, stain=ref)
    feats = {p.stem: open_features(root, p.stem) for p in two_sites}
    for sf in feats.values():
        assert sf.attrs["stain"] == ref.id and sf.attrs["stain_reference"]["method"] == "macenko"
    # the HED-texture features of the two sites agree better after normalisation
    plain = tmp_path / "plain"
    for path in two_sites:
        extract_slide(path, plain, encoder, magnifications=("20x",), num_workers=0)
    raw = {p.stem: open_features(plain, p.stem) for p in two_sites}
    gap_raw = np.abs(raw["site_a"].feats().mean(0) - raw["site_b"].feats().mean(0)).sum()
    gap_norm = np.abs(feats["site_a"].feats().mean(0) - feats["site_b"].feats().mean(0)).sum()
    assert gap_norm < 0.6 * gap_raw, (gap_raw, gap_norm)
    # features normalised to one reference are never extended with unnormalised ones
    with pytest.raises(DataError, match="stain"):
        extract_slide(two_sites[0], root, encoder, magnifications=("20x",), num_workers=0)
    # an external cohort reuses the training reference file
    other = tmp_path / "external"
    assert cohort_reference([two_sites[1]], "macenko", other, root / REFERENCE_FILE) == ref
    assert (other / REFERENCE_FILE).is_file()


def test_extract_cli_accepts_stain_options():
    from histokd_core.cli import build_parser

    args = build_parser().parse_args(
        ["extract", "a.svs", "--out", "o", "--stain", "reinhard", "--stain-reference", "r.json"]
    )
    assert args.stain == "reinhard" and str(args.stain_reference) == "r.json"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["extract", "a.svs", "--out", "o", "--stain", "vahadane"])


def test_real_slide_reference_is_plausible(shared_data):
    ref = cohort_reference([shared_data / CMU_SVS], "macenko", per_slide=12)
    he = np.asarray(ref.params["HERef"])
    # haematoxylin absorbs red most, eosin green most (the textbook H&E vectors)
    assert he[0, 0] > he[2, 0] and np.argmax(he[:, 1]) == 1
