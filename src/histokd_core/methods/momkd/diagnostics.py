"""Memory diagnostics: how many components are used and how evenly (the paper's Fig. 3).

Usage counts are the number of patches whose nearest own-class component is ``k``, accumulated
over an epoch, ``(2, K)`` (row 0 = ``C-``, row 1 = ``C+``).

What the memory transfers is measured by the generic swap diagnostic,
:func:`histokd_core.train.swap.model_swap_diagnostic`, on
:meth:`~histokd_core.methods.momkd.model.MoMKDModel.distillation_targets`; pass
``within_class=True`` to hold the label fixed (a MoMKD case's label picks the memory it moves).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

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
