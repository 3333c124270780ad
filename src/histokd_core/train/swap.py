"""Swap diagnostic: how much of a distillation target follows the expression, how much the slide.

A teacher's distillation target ``f(slide, omics)`` (AMKD's ``L_GE`` and ``L_KD`` targets, the
subspace teacher's SKD features and logits, MoMKD's memory alignment, ...) is worth distilling
into a slide-only student only if it carries expression information the slide alone does not.
For pairs of cases ``(i, j)`` this module compares, element by element,

- the **expression swap** ``f(slide_i, omics_j) - f(slide_i, omics_i)`` (slide kept),
- the **slide swap** ``f(slide_j, omics_i) - f(slide_i, omics_i)`` (expression kept),
- the **between-case difference** ``f(slide_j, omics_j) - f(slide_i, omics_i)``,

summing squared differences over all pairs and all elements of the target (``e``, ``s``, ``t``).
Reported per target (:class:`SwapShare`):

- ``expression = e / (e + s)``: the share of the swap variance that follows the expression.
  For an additive target ``f = a(slide) + b(omics)`` it is exactly
  ``sum |b(o_j) - b(o_i)|^2 / (sum |a(x_j) - a(x_i)|^2 + sum |b(o_j) - b(o_i)|^2)``:
  1 for a target of the expression alone, 0 for one of the slide alone;
- ``expression_vs_total = e / t`` and ``slide_vs_total = s / t``: each swap's change as a share of
  the between-case variance (they sum to 1 for additive targets, to more with interactions).

Pairs: the cases in a random order (``seed``), each paired with the ``1 .. n_shifts``-th next one
(cyclically), so every case is swapped with ``n_shifts`` others and no case with itself. With
``within_class`` only cases of the same class label are paired (each class in its own random
order): the label, which travels with the case (the omics side), then never changes in a swap.
That matters for targets the label picks, such as the class memory a MoMKD case updates; over all
pairs such a target's "expression" share is partly the label's.

Per-patch targets (``(n, d)``) are compared patch by patch at the same position, so every case must
give the same number of patches: pass ``n_patches`` to draw that many patches per case (fixed
draw, ``seed``; 20x ``feats``, ``coords`` and ``slide_index`` together; the 10x view is kept).

Models expose their targets through an optional method ``distillation_targets(bag) ->
dict[str, Tensor]`` (see :func:`model_swap_diagnostic`); the function itself takes any callable.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from histokd_core.bag import Bag
from histokd_core.errors import ConfigError, HistoKDError

#: the slide-side fields of a :class:`Bag`; everything else (omics, outcome) stays with the case.
SLIDE_FIELDS = (
    "feats", "coords", "slide_index", "patch_size", "feats_10x", "coords_10x", "slide_index_10x",
)


@dataclass
class SwapShare:
    """Swap diagnostic of one target (see the module docstring).

    Attributes
    ----------
    expression : ``e / (e + s)``, in [0, 1]: share of the swap variance following the expression.
    expression_vs_total, slide_vs_total : ``e / t`` and ``s / t``, each swap's squared change
        over the squared between-case difference.
    n_pairs : number of (case, other case) pairs compared.
    """

    expression: float
    expression_vs_total: float
    slide_vs_total: float
    n_pairs: int


def swap_bag(slide_from: Bag, omics_from: Bag) -> Bag:
    """A bag with the slide fields of ``slide_from`` and everything else (case id, omics, outcome)
    of ``omics_from``."""
    return dataclasses.replace(
        omics_from, **{k: getattr(slide_from, k) for k in SLIDE_FIELDS}
    )


def same_patch_count(bags: Sequence[Bag], n_patches: int, seed: int = 0) -> list[Bag]:
    """Each bag cut to ``n_patches`` 20x patches drawn without replacement (fixed ``seed``);
    ``feats``, ``coords`` and ``slide_index`` keep their alignment. Raises when a bag has fewer."""
    if n_patches < 1:
        raise ConfigError(f"swap diagnostic: n_patches must be >= 1, got {n_patches}")
    gen = torch.Generator().manual_seed(seed)
    out = []
    for b in bags:
        n = b.feats.shape[0]
        if n < n_patches:
            raise HistoKDError(
                f"swap diagnostic: case {b.case_id} has {n} patches, fewer than n_patches = "
                f"{n_patches}"
            )
        idx = torch.randperm(n, generator=gen)[:n_patches].sort().values
        idx = idx.to(b.feats.device)
        out.append(dataclasses.replace(
            b,
            feats=b.feats[idx],
            coords=b.coords[idx],
            slide_index=None if b.slide_index is None else b.slide_index[idx],
        ))
    return out


def swap_pairs(
    n: int, n_shifts: int = 3, seed: int = 0, groups: Sequence[int] | None = None
) -> list[tuple[int, int]]:
    """``(i, j)`` pairs of case indices ``0 .. n - 1``: cases in a random order, each with its
    ``1 .. n_shifts``-th successor (cyclic); ``n_shifts`` is capped at ``n - 1``.

    With ``groups`` (one key per case, e.g. its class label) a case is paired only with cases of
    its own group: every group (in ascending key order) gets its own random order and
    ``n_shifts`` capped at its size - 1. Raises when a group has fewer than 2 cases.
    """
    if groups is None:
        if n < 2:
            raise HistoKDError(f"swap diagnostic needs at least 2 cases, got {n}")
        groups = [0] * n
    elif len(groups) != n:
        raise HistoKDError(f"swap diagnostic: {len(groups)} group keys for {n} cases")
    gen = torch.Generator().manual_seed(seed)
    pairs = []
    for key in sorted(set(groups)):
        members = [i for i, g in enumerate(groups) if g == key]
        m = len(members)
        if m < 2:
            raise HistoKDError(
                f"swap diagnostic needs at least 2 cases per class, got {m} of class {key}"
            )
        order = [members[k] for k in torch.randperm(m, generator=gen).tolist()]
        shifts = range(1, min(n_shifts, m - 1) + 1)
        pairs += [(order[p], order[(p + r) % m]) for r in shifts for p in range(m)]
    return pairs


def class_groups(bags: Sequence[Bag]) -> list[int]:
    """The class label of every bag, the ``groups`` of :func:`swap_pairs` for pairs within a
    class. Raises when a bag has no label (``-1``, e.g. survival cases)."""
    unlabelled = [b.case_id for b in bags if int(b.label) < 0]
    if unlabelled:
        raise HistoKDError(
            f"swap diagnostic within class needs class labels; no label for {unlabelled[:5]}"
        )
    return [int(b.label) for b in bags]


def swap_shares(
    targets: Callable[[Bag], Mapping[str, torch.Tensor]],
    bags: Sequence[Bag],
    *,
    n_shifts: int = 3,
    seed: int = 0,
    n_patches: int | None = None,
    within_class: bool = False,
) -> dict[str, SwapShare]:
    """Swap diagnostic of every target ``targets(bag)`` returns, over pairs of ``bags``.

    Parameters
    ----------
    targets : bag -> {name: tensor}; every name must give the same shape for every bag (a 0-d
        risk, ``(C,)`` logits, ``(P, d)`` pathway tokens, ``(n, d)`` per-patch features with a
        fixed ``n``). Run under ``torch.no_grad``; put the model in eval mode beforehand.
    bags : the cases (at least 2), with omics; swapped bags are made by :func:`swap_bag`.
    n_shifts : partners per case (3); seed : order of the pairs and the patch draw.
    n_patches : when given, every bag is first cut to this many patches
        (:func:`same_patch_count`), for per-patch targets.
    within_class : pair only cases of the same class label (:func:`class_groups`; at least 2
        cases per class), so the label never changes in a swap.

    Returns
    -------
    target name -> :class:`SwapShare`.
    """
    if n_patches is not None:
        bags = same_patch_count(bags, n_patches, seed)
    pairs = swap_pairs(len(bags), n_shifts, seed, class_groups(bags) if within_class else None)
    with torch.no_grad():
        base = [_as_float(targets(b), b.case_id) for b in bags]
        names = list(base[0])
        sums = {k: torch.zeros(3, dtype=torch.float64) for k in names}
        for i, j in pairs:
            for k in names:
                if base[i][k].shape != base[j][k].shape:
                    raise HistoKDError(
                        f"swap diagnostic: target {k!r} has shape {tuple(base[i][k].shape)} for "
                        f"case {bags[i].case_id} and {tuple(base[j][k].shape)} for case "
                        f"{bags[j].case_id}; per-patch targets need n_patches"
                    )
            expr = _as_float(targets(swap_bag(bags[i], bags[j])), bags[i].case_id)
            slide = _as_float(targets(swap_bag(bags[j], bags[i])), bags[i].case_id)
            for k in names:
                ref = base[i][k]
                sums[k] += torch.stack([
                    ((expr[k] - ref) ** 2).sum(),
                    ((slide[k] - ref) ** 2).sum(),
                    ((base[j][k] - ref) ** 2).sum(),
                ])
    out = {}
    for k, (e, s, t) in sums.items():
        e, s, t = float(e), float(s), float(t)
        out[k] = SwapShare(
            expression=e / (e + s) if e + s > 0 else float("nan"),
            expression_vs_total=e / t if t > 0 else float("nan"),
            slide_vs_total=s / t if t > 0 else float("nan"),
            n_pairs=len(pairs),
        )
    return out


def model_swap_diagnostic(
    model,
    bags: Sequence[Bag],
    *,
    n_shifts: int = 3,
    seed: int = 0,
    max_patches: int = 512,
    within_class: bool = False,
) -> dict[str, SwapShare]:
    """:func:`swap_shares` of ``model.distillation_targets`` (a trained teacher or a MoMKD model,
    set to eval mode here); ``within_class`` pairs only cases of the same label.

    When a target's shape differs between cases (per-patch targets), every bag is first cut to
    ``min(max_patches, fewest patches of any bag)`` patches so they line up; per-case targets are
    computed on all patches. Raises when the model has no ``distillation_targets``.
    """
    fn = getattr(model, "distillation_targets", None)
    if fn is None:
        raise HistoKDError(f"{type(model).__name__} has no distillation_targets(bag)")
    model.eval()
    with torch.no_grad():
        shapes = [{k: tuple(v.shape) for k, v in fn(b).items()} for b in bags]
    n_patches = None
    if any(s != shapes[0] for s in shapes[1:]):
        n_patches = min(max_patches, min(int(b.feats.shape[0]) for b in bags))
    return swap_shares(fn, bags, n_shifts=n_shifts, seed=seed, n_patches=n_patches,
                       within_class=within_class)


def summarize_swaps(per_fold: Sequence[Mapping[str, Mapping[str, Mapping[str, float]]]]) -> dict:
    """Mean and (population) std over folds of ``expression``, ``expression_vs_total`` and
    ``slide_vs_total``: ``{stage: {target: {"expression_mean": ..., ...}}}`` from the per-fold
    ``{stage: {target: asdict(SwapShare)}}``."""
    out: dict = {}
    keys = ("expression", "expression_vs_total", "slide_vs_total")
    for fold in per_fold:
        for stage, targets in fold.items():
            for target, share in targets.items():
                cell = out.setdefault(stage, {}).setdefault(target, {k: [] for k in keys})
                for k in keys:
                    cell[k].append(float(share[k]))
    for targets in out.values():
        for target, cell in targets.items():
            summary = {}
            for k in keys:
                v = torch.tensor(cell[k], dtype=torch.float64)
                summary[f"{k}_mean"] = float(v.mean())
                summary[f"{k}_std"] = float(v.std(unbiased=False))
            targets[target] = summary
    return out


def _as_float(targets: Mapping[str, torch.Tensor], case_id: str) -> dict[str, torch.Tensor]:
    if not targets:
        raise HistoKDError(f"swap diagnostic: no targets for case {case_id}")
    return {k: v.detach().to("cpu", torch.float64) for k, v in targets.items()}
