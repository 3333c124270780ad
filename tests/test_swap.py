"""Swap diagnostic on targets whose dependence on slide and expression is known by construction."""

import math

import pytest
import torch

from histokd_core.bag import Bag
from histokd_core.errors import HistoKDError
from histokd_core.train.swap import (
    model_swap_diagnostic,
    same_patch_count,
    swap_bag,
    swap_pairs,
    swap_shares,
)


def bags_from(xs, os_, n_patch=4, labels=None):
    """Case ``i``: every patch feature ``xs[i]`` (``(n_patch, 2)``), omics ``(os_[i], 0)``, class
    ``labels[i]`` (-1 when not given)."""
    labels = [-1] * len(xs) if labels is None else labels
    out = []
    for i, (x, o, y) in enumerate(zip(xs, os_, labels)):
        feats = torch.full((n_patch, 2), float(x))
        coords = torch.zeros(n_patch, 2, dtype=torch.long)
        out.append(Bag(f"c{i}", feats, coords, omics=torch.tensor([float(o), 0.0]), time=1.0 + i,
                       label=y))
    return out


def slide_value(b):
    return b.feats[:, 0].mean()


def test_swap_bag_keeps_the_case_and_takes_the_slide():
    a, b = bags_from([1, 2], [10, 20])
    s = swap_bag(slide_from=a, omics_from=b)
    assert s.case_id == "c1" and float(s.omics[0]) == 20 and float(s.feats[0, 0]) == 1
    assert s.time == b.time


def test_pairs_never_pair_a_case_with_itself():
    pairs = swap_pairs(5, n_shifts=3, seed=1)
    assert len(pairs) == 15 and all(i != j for i, j in pairs)
    assert sorted({p for p in pairs}) == sorted(pairs)  # no duplicates
    assert len(swap_pairs(3, n_shifts=9)) == 6  # capped at n - 1: all ordered pairs
    with pytest.raises(HistoKDError, match="at least 2"):
        swap_pairs(1)


def test_pairs_within_class_stay_in_their_class():
    labels = [0, 1, 0, 1, 1, 0, 1]
    pairs = swap_pairs(7, n_shifts=2, seed=3, groups=labels)
    assert all(labels[i] == labels[j] and i != j for i, j in pairs)
    assert len(pairs) == 3 * 2 + 4 * 2  # class 0: 3 cases, class 1: 4 cases, 2 partners each
    assert len(swap_pairs(5, n_shifts=3, seed=1, groups=[0] * 5)) == 15
    assert swap_pairs(5, n_shifts=3, seed=1, groups=[0] * 5) == swap_pairs(5, 3, seed=1)
    with pytest.raises(HistoKDError, match="at least 2 cases per class, got 1 of class 1"):
        swap_pairs(3, groups=[0, 0, 1])


def test_within_class_hand_values():
    """Class 0: cases x = (0, 1), o = (0, 2); class 1: x = (3, 5), o = (2, 2); f = x + o.
    Within class (all 4 ordered pairs): e = 2 * 2^2 + 0 = 8, s = 2 * 1^2 + 2 * 2^2 = 10,
    f = (0, 3 | 5, 7): t = 2 * 3^2 + 2 * 2^2 = 26. A target of the label alone moves with the
    case over all pairs (share 1) and never within a class (no swap change: NaN)."""
    bags = bags_from([0, 1, 3, 5], [0, 2, 2, 2], labels=[0, 0, 1, 1])

    def targets(b):
        return {"sum": slide_value(b) + b.omics[0], "label": torch.tensor(float(b.label))}

    within = swap_shares(targets, bags, n_shifts=3, within_class=True)
    m = within["sum"]
    assert m.n_pairs == 4
    assert m.expression == pytest.approx(8 / 18)
    assert m.expression_vs_total == pytest.approx(8 / 26)
    assert m.slide_vs_total == pytest.approx(10 / 26)
    assert math.isnan(within["label"].expression)
    across = swap_shares(targets, bags, n_shifts=3)
    assert across["label"].expression == pytest.approx(1.0) and across["sum"].n_pairs == 12
    assert model_swap_diagnostic(LabelModel(), bags, within_class=True)["label"].n_pairs == 4
    with pytest.raises(HistoKDError, match="needs class labels"):
        swap_shares(targets, bags_from([0, 1], [0, 2]), within_class=True)


class LabelModel(torch.nn.Module):
    def distillation_targets(self, bag):
        return {"label": torch.tensor(float(bag.label))}


def test_expression_only_slide_only_and_mixed_hand_values():
    bags = bags_from([0, 1, 3], [0, 2, 2])
    shares = swap_shares(
        lambda b: {
            "omics": b.omics[0] * 3.0,
            "slide": slide_value(b) * torch.ones(2),
            "mixed": slide_value(b) + b.omics[0],
        },
        bags,
        n_shifts=2,  # 3 cases: all 6 ordered pairs
    )
    assert shares["omics"].expression == pytest.approx(1.0)
    assert shares["omics"].expression_vs_total == pytest.approx(1.0)
    assert shares["slide"].expression == pytest.approx(0.0)
    assert shares["slide"].slide_vs_total == pytest.approx(1.0)
    # f = x + o over all ordered pairs: e = 2 * (4 + 4 + 0) = 16, s = 2 * (1 + 9 + 4) = 28,
    # f = (0, 3, 5): t = 2 * (9 + 25 + 4) = 76
    m = shares["mixed"]
    assert m.expression == pytest.approx(16 / 44)
    assert m.expression_vs_total == pytest.approx(16 / 76)
    assert m.slide_vs_total == pytest.approx(28 / 76)
    assert m.n_pairs == 6


def test_interaction_swaps_sum_above_the_between_case_variance():
    bags = bags_from([1, 2], [1, 2])
    # f = x * o: f = (1, 4); both swaps give 2 from either case: e = s = 1 + 4 = 5, t = 2 * 9
    m = swap_shares(lambda b: {"prod": slide_value(b) * b.omics[0]}, bags)["prod"]
    assert m.expression == pytest.approx(0.5)
    assert m.expression_vs_total + m.slide_vs_total == pytest.approx(10 / 18)


def test_per_patch_targets_need_equal_patch_counts():
    bags = bags_from([0, 1, 3], [0, 2, 2])
    bags[1] = Bag("c1", torch.ones(6, 2), torch.zeros(6, 2, dtype=torch.long),
                  omics=torch.tensor([2.0, 0.0]))

    def per_patch(b):  # (n, 2): each patch's features times the case's expression
        return {"patch": b.feats * b.omics[0]}

    with pytest.raises(HistoKDError, match="n_patches"):
        swap_shares(per_patch, bags)
    cut = same_patch_count(bags, 3, seed=0)
    assert [b.feats.shape[0] for b in cut] == [3, 3, 3]
    out = swap_shares(per_patch, bags, n_patches=3)["patch"]
    assert 0 < out.expression < 1


class OmicsOnlyModel(torch.nn.Module):
    def distillation_targets(self, bag):
        return {"risk": bag.omics.sum(), "tokens": bag.feats * 0 + bag.omics[0]}


def test_model_swap_diagnostic_reads_distillation_targets():
    bags = bags_from([0, 1, 3, 4], [0, 2, 2, 5], n_patch=5)
    out = model_swap_diagnostic(OmicsOnlyModel(), bags)
    assert out["risk"].expression == pytest.approx(1.0)
    assert out["tokens"].expression == pytest.approx(1.0)
    with pytest.raises(HistoKDError, match="distillation_targets"):
        model_swap_diagnostic(torch.nn.Linear(1, 1), bags)
