"""Memory diagnostics: how many components are used and how evenly (the paper's Fig. 3), and
what the memory transfers (the swap diagnostic of its alignment targets).

Usage counts are the number of patches whose nearest own-class component is ``k``, accumulated
over an epoch, ``(2, K)`` (row 0 = ``C-``, row 1 = ``C+``).

:func:`memory_swap_shares` is the swap diagnostic of the distillation issue written for MoMKD
(the generic ``histokd_core.train.swap`` had not landed when it was needed; same definition,
plus pairs within a class, since a MoMKD case's label picks the memory it moves).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from histokd_core.bag import Bag
from histokd_core.errors import HistoKDError
from histokd_core.io import atomic_path


def active_ratio(counts: torch.Tensor) -> float:
    """Fraction of components nearest to at least one patch; ``counts (..., K)`` usage counts."""
    counts = torch.as_tensor(counts)
    return float((counts > 0).float().mean()) if counts.numel() else 0.0


def perplexity(counts: torch.Tensor) -> float:
    """``exp(entropy)`` of the usage distribution of one memory, averaged over classes.

    ``counts (K,)`` or ``(2, K)``. Ranges from 1 (one component takes every patch) to ``K``
    (uniform use). A class without any counted patch is skipped; 0.0 when none has any.
    """
    counts = torch.as_tensor(counts, dtype=torch.float64)
    counts = counts.reshape(-1, counts.shape[-1])
    values = []
    for row in counts:
        total = row.sum()
        if total <= 0:
            continue
        p = row[row > 0] / total
        values.append(float(torch.exp(-(p * p.log()).sum())))
    return sum(values) / len(values) if values else 0.0


class UsageTracker:
    """Accumulates nearest-component counts over an epoch."""

    def __init__(self, n_components: int) -> None:
        self.counts = torch.zeros(2, n_components, dtype=torch.long)

    def update(self, label: int, assign: torch.Tensor) -> None:
        """Add the assignments ``(n,)`` of one bag of class ``label``."""
        self.counts[int(label)] += torch.bincount(assign.cpu(), minlength=self.counts.shape[1])

    def summary(self, reset: bool = True) -> dict[str, float]:
        """``{"memory_active_ratio", "memory_perplexity", "memory_active_ratio_pos", ..._neg}``."""
        out = {
            "memory_active_ratio": active_ratio(self.counts),
            "memory_perplexity": perplexity(self.counts),
            "memory_active_ratio_pos": active_ratio(self.counts[1]),
            "memory_active_ratio_neg": active_ratio(self.counts[0]),
        }
        if reset:
            self.counts.zero_()
        return out


def plot_memory_diagnostics(
    history: Mapping[str, Sequence[Mapping[str, float]]], path: str | os.PathLike, title: str = ""
) -> Path:
    """PNG of the memory active ratio and perplexity per epoch (the paper's Fig. 3), written
    atomically.

    Parameters
    ----------
    history : curve label (e.g. ``"fold_0 student"``) -> per-epoch metric dicts as written by the
        trainer (``history.json``); entries without ``memory_active_ratio`` are skipped.
    path : output PNG.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.6), dpi=120)
    FigureCanvasAgg(fig)
    ax_active, ax_ppl = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for label, epochs in history.items():
        rows = [e for e in epochs if "memory_active_ratio" in e]
        if not rows:
            continue
        x = [e.get("epoch", i + 1) for i, e in enumerate(rows)]
        ax_active.plot(x, [e["memory_active_ratio"] for e in rows], marker=".", label=label)
        ax_ppl.plot(x, [e["memory_perplexity"] for e in rows], marker=".", label=label)
    ax_active.set_ylim(0, 1.05)
    ax_active.set_ylabel("active memory ratio")
    ax_ppl.set_ylabel("memory perplexity")
    for ax in (ax_active, ax_ppl):
        ax.set_xlabel("epoch")
    if ax_active.lines:
        ax_ppl.legend(loc="best", frameon=False, fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


#: the slide-side fields of a :class:`~histokd_core.bag.Bag`; omics and label stay with the case.
SLIDE_FIELDS = (
    "feats", "coords", "slide_index", "patch_size", "feats_10x", "coords_10x", "slide_index_10x",
)


def memory_swap_shares(
    model,
    bags: Sequence[Bag],
    *,
    n_shifts: int = 3,
    seed: int = 0,
    max_patches: int = 512,
    within_class: bool = False,
) -> dict[str, dict[str, float]]:
    """Swap diagnostic of MoMKD's memory alignment: how much of each of
    ``model.distillation_targets`` follows the expression, how much the slide.

    For pairs of cases ``(i, j)`` and every target ``f(slide, case)`` (the case brings its omics
    and its label):

    - ``e = sum |f(slide_i, case_j) - f(slide_i, case_i)|^2`` (expression swapped),
    - ``s = sum |f(slide_j, case_i) - f(slide_i, case_i)|^2`` (slide swapped),
    - ``t = sum |f(slide_j, case_j) - f(slide_i, case_i)|^2`` (between-case difference),

    summed over pairs and elements. Pairs: the cases in a random order (``seed``), each with its
    ``1 .. n_shifts``-th successor (cyclic); with ``within_class`` only cases of the same label are
    paired (the label, which picks the memory a case updates, then never changes in a swap).
    Per-patch targets are compared patch by patch: every bag is first cut to
    ``min(max_patches, fewest patches)`` patches (a fixed draw, ``seed``).

    Parameters
    ----------
    model : a trained :class:`~histokd_core.methods.momkd.MoMKDModel` (put in eval mode here).
    bags : cases with omics and labels (at least 2 per group).

    Returns
    -------
    target name -> ``{"expression": e / (e + s), "expression_vs_total": e / t,
    "slide_vs_total": s / t, "n_pairs": ...}`` (NaN where a denominator is 0).
    """
    if max_patches < 1:
        raise HistoKDError(f"max_patches must be >= 1, got {max_patches}")
    groups = (
        [[b for b in bags if int(b.label) == y] for y in sorted({int(b.label) for b in bags})]
        if within_class
        else [list(bags)]
    )
    n_keep = min(max_patches, min(int(b.feats.shape[0]) for b in bags))
    gen = torch.Generator().manual_seed(seed)
    model.eval()
    sums: dict[str, torch.Tensor] = {}
    n_pairs = 0
    for group in groups:
        if len(group) < 2:
            raise HistoKDError(
                f"swap diagnostic needs at least 2 cases per group, got {len(group)}"
            )
        cut = [_cut(b, n_keep, gen) for b in group]
        order = torch.randperm(len(cut), generator=gen).tolist()
        shifts = range(1, min(n_shifts, len(cut) - 1) + 1)
        base = [_targets(model, b) for b in cut]
        for r in shifts:
            for p, i in enumerate(order):
                j = order[(p + r) % len(order)]
                expr = _targets(model, _swap(cut[i], cut[j]))
                slide = _targets(model, _swap(cut[j], cut[i]))
                for k, ref in base[i].items():
                    sums.setdefault(k, torch.zeros(3, dtype=torch.float64))
                    sums[k] += torch.stack([
                        ((expr[k] - ref) ** 2).sum(),
                        ((slide[k] - ref) ** 2).sum(),
                        ((base[j][k] - ref) ** 2).sum(),
                    ])
                n_pairs += 1
    out = {}
    for k, (e, s, t) in sums.items():
        e, s, t = float(e), float(s), float(t)
        out[k] = {
            "expression": e / (e + s) if e + s > 0 else math.nan,
            "expression_vs_total": e / t if t > 0 else math.nan,
            "slide_vs_total": s / t if t > 0 else math.nan,
            "n_pairs": n_pairs,
        }
    return out


def _cut(bag: Bag, n: int, gen: torch.Generator) -> Bag:
    idx = torch.randperm(int(bag.feats.shape[0]), generator=gen)[:n].sort().values
    return dataclasses.replace(
        bag,
        feats=bag.feats[idx],
        coords=bag.coords[idx],
        slide_index=None if bag.slide_index is None else bag.slide_index[idx],
    )


def _swap(slide_from: Bag, case_from: Bag) -> Bag:
    """The slide of ``slide_from`` with the case (id, omics, label) of ``case_from``."""
    return dataclasses.replace(case_from, **{k: getattr(slide_from, k) for k in SLIDE_FIELDS})


def _targets(model, bag: Bag) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", torch.float64)
            for k, v in model.distillation_targets(bag).items()}
