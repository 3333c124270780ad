"""Honest colour scales (histokd_core.explain.colour): units, ranges, near-uniform flag, tables."""

import numpy as np
import pytest

from histokd_core.errors import DataError
from histokd_core.explain.colour import (
    FIXED_ATTENTION_HIGH,
    cohort_scale,
    diverging_table,
    is_near_uniform,
    map_scale,
    pathway_score_text,
    sequential_table,
    srgb_to_lab,
    to_display,
)


def test_attention_in_multiples_of_uniform():
    att = np.array([0.1, 0.2, 0.3, 0.4])
    np.testing.assert_allclose(to_display(att, "attention"), [0.4, 0.8, 1.2, 1.6])
    # n given explicitly (a map over a subset of the slide's patches keeps the slide's n)
    np.testing.assert_allclose(to_display(att, "attention", n_patches=10), [1, 2, 3, 4])
    np.testing.assert_array_equal(to_display(att, "probability"), att)
    with pytest.raises(DataError, match="map kind"):
        to_display(att, "banana")


def test_cmu_like_flat_attention_is_flagged_and_not_stretched():
    # the CMU slide: 35 patches, attention 0.0275..0.0295 around 1/35 = 0.0286
    rng = np.random.default_rng(0)
    att = rng.uniform(0.0275, 0.0295, 35)
    att /= att.sum()
    v = to_display(att, "attention")
    s = map_scale(v, "attention")
    assert s.near_uniform and "nearly uniform" in s.note
    assert s.low == 0.0 and s.high == 2.0  # never stretched to 0.96..1.03
    assert s.unit == "x uniform (1/n)"
    # a peaked map is not flagged; the slide scale ends at its max
    peaked = np.full(10, 0.5 / 9)
    peaked[3] = 0.5
    s2 = map_scale(to_display(peaked, "attention"), "attention")
    assert not s2.near_uniform and s2.note == ""
    assert s2.high == pytest.approx(5.0)


def test_near_uniform_threshold_is_1_5_times_uniform():
    assert is_near_uniform(np.array([1.0, 1.49]))
    assert not is_near_uniform(np.array([1.0, 1.5]))
    assert not is_near_uniform(np.array([0.0, 1.0]), kind="signed")


def test_fixed_and_probability_and_signed_ranges():
    v = np.array([0.5, 6.0, np.nan])
    s = map_scale(v, "attention", mode="fixed")
    assert (s.low, s.high) == (0.0, FIXED_ATTENTION_HIGH)
    assert "1 of 2 patches beyond the scale" in s.note
    p = map_scale(np.array([0.2, 0.3]), "probability")
    assert (p.low, p.high) == (0.0, 1.0)
    g = map_scale(np.array([-0.2, 0.05]), "signed")
    assert (g.low, g.high) == (-0.2, 0.2) and g.colormap_name == "histokd-diverging"
    assert map_scale(np.array([0.3]), "similarity", mode="fixed").low == -1.0
    with pytest.raises(DataError, match="fixed scale"):
        map_scale(v, "signed", mode="fixed")


def test_risk_contribution_is_signed_with_its_unit_and_no_fixed_range():
    from histokd_core.explain.colour import has_fixed_range

    # the unit is the model's (Explanation.contribution_unit), e.g. the linear AMKD student's
    c = map_scale(np.array([-0.02, 0.05, 0.01]), "contribution",
                  unit="risk contribution (log-hazard)")
    assert (c.low, c.high) == (-0.05, 0.05) and c.colormap_name == "histokd-diverging"
    assert c.unit == "risk contribution (log-hazard)" and "minus the model's bias" in c.meaning
    assert not c.near_uniform  # only attention has a uniform reference
    assert c.label == "risk contribution (log-hazard): -0.05 to 0.05 (slide scale)"
    assert map_scale(np.array([0.1]), "contribution").unit == "contribution (model output units)"
    assert not has_fixed_range("contribution") and has_fixed_range("attention")
    with pytest.raises(DataError, match="fixed scale"):
        map_scale(np.array([0.1]), "contribution", mode="fixed")
    pooled = cohort_scale([np.array([-0.3, 0.1]), np.array([0.2])], "contribution", quantile=1.0,
                          unit="log-odds contribution (class 1 vs class 0)")
    assert (pooled.low, pooled.high, pooled.colormap_name) == (-0.3, 0.3, "histokd-diverging")
    # a slide drawn on the cohort scale keeps its unit
    one = map_scale(np.array([0.1]), "contribution", mode="cohort", cohort=pooled)
    assert one.unit == "log-odds contribution (class 1 vs class 0)"


def test_cohort_scale_is_the_same_for_every_slide():
    slides = [np.linspace(0, 3, 100), np.linspace(0, 8, 50)]
    c = cohort_scale(slides, "attention", quantile=1.0)
    assert (c.low, c.high, c.mode) == (0.0, 8.0, "cohort")
    a = map_scale(slides[0], "attention", mode="cohort", cohort=c)
    b = map_scale(slides[1], "attention", mode="cohort", cohort=c)
    assert (a.low, a.high) == (b.low, b.high) == (0.0, 8.0)
    q = cohort_scale(slides, "attention", quantile=0.9)
    assert q.high == pytest.approx(np.quantile(np.concatenate(slides), 0.9))
    assert cohort_scale([np.full(5, 1.1)], "attention").high == 2.0  # flat cohort: not stretched
    s = cohort_scale([np.array([-0.3, 0.1]), np.array([0.2])], "signed", quantile=1.0)
    assert (s.low, s.high) == (-0.3, 0.3)
    with pytest.raises(DataError, match="cohort scale"):
        map_scale(slides[0], "attention", mode="cohort")
    with pytest.raises(DataError, match="not signed"):
        map_scale(slides[0], "signed", mode="cohort", cohort=c)
    with pytest.raises(DataError, match="no maps"):
        cohort_scale([np.array([np.nan])], "attention")


def test_srgb_to_lab_reference_values():
    # white, black, sRGB red (CIE76 reference values)
    lab = srgb_to_lab(np.array([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]))
    np.testing.assert_allclose(lab[0], [100, 0, 0], atol=0.05)
    np.testing.assert_allclose(lab[1], [0, 0, 0], atol=0.05)
    np.testing.assert_allclose(lab[2], [53.24, 80.09, 67.20], atol=0.05)


def test_tables_are_perceptually_uniform_and_transparent_at_the_low_end():
    seq = sequential_table()
    assert seq.shape == (256, 4) and seq[0, 3] == 0.0 and seq[-1, 3] > 0.8
    assert np.all(np.diff(seq[:, 3]) >= 0)
    lightness = srgb_to_lab(seq[:, :3])[:, 0]
    steps = np.diff(lightness)
    assert np.all(steps > 0)  # monotonic lightness
    assert steps.max() / steps.min() < 1.05  # equal perceptual steps
    div = diverging_table()
    mid = len(div) // 2
    assert div[mid - 1, 3] < 0.01 and div[0, 3] > 0.8 and div[-1, 3] > 0.8
    ld = srgb_to_lab(div[:, :3])[:, 0]
    assert np.all(np.diff(ld[:mid]) > 0) and np.all(np.diff(ld[mid:]) < 0)
    assert abs(ld[0] - ld[-1]) < 1.0  # both signs equally strong


@pytest.mark.parametrize("table", [sequential_table(), diverging_table()])
def test_visible_colours_stay_away_from_h_and_e(table):
    # haematoxylin (blue-purple nuclei), eosin (pink stroma) and a pale pink background, sRGB
    he = np.array([[0.30, 0.20, 0.55], [0.55, 0.30, 0.65], [0.90, 0.55, 0.75], [0.95, 0.80, 0.88]])
    visible = table[table[:, 3] > 0.4, :3]
    lab_t, lab_he = srgb_to_lab(visible), srgb_to_lab(he)
    de = np.linalg.norm(lab_t[:, None, :] - lab_he[None, :, :], axis=-1)
    assert de.min() > 25  # CIE76: clearly different colours


def test_pathway_score_text():
    assert pathway_score_text(0.0123) == "+0.0123 (raises risk)"
    assert pathway_score_text(-0.004, task="classification") == "-0.004 (lowers P(positive))"


def test_tables_are_in_gamut():
    # no sRGB clipping: the CIELAB path is reproduced exactly, so the lightness steps are real
    from histokd_core.explain.colour import DIV_MID, DIV_NEG, DIV_POS, SEQ_PATH

    seq, div = sequential_table(), diverging_table()
    np.testing.assert_allclose(srgb_to_lab(seq[[0, 128, -1], :3]), SEQ_PATH, atol=0.3)
    np.testing.assert_allclose(srgb_to_lab(div[[0, 127, -1], :3]), [DIV_NEG, DIV_MID, DIV_POS], atol=0.3)


def test_flat_similarity_map_is_flagged_with_its_range():
    # every patch about equally similar to the memory component (0.86-0.90): flagged and said
    flat = map_scale(np.array([0.86, 0.88, 0.90]), "similarity")
    assert flat.near_uniform
    assert "within 0.86 to 0.90" in flat.note and "no patch stands out" in flat.note
    # a spread of 0.1 or more is a map, whatever its level
    assert not map_scale(np.array([0.2, 0.35]), "similarity").near_uniform
    assert not is_near_uniform(np.array([0.2, 0.35]), kind="similarity")
    assert is_near_uniform(np.array([-0.5, -0.45]), kind="similarity")
    assert not is_near_uniform(np.array([]), kind="similarity")
