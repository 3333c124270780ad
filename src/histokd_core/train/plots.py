"""Training-curve figure of a cross-validation run (per-epoch history of every stage)."""

from __future__ import annotations

import os
from pathlib import Path

from histokd_core.io import atomic_path

#: history keys drawn when present, in panel order
PANELS = (
    "train_loss",
    "val_c_index",
    "val_auc",
    "memory_active_ratio",
    "memory_perplexity",
)


def plot_history(history: dict[str, dict[str, list[dict]]], path: str | os.PathLike) -> Path | None:
    """One panel per metric of :data:`PANELS` found in ``history`` (``fold -> stage -> epochs``),
    one colour per stage, one line per fold; written atomically as PNG. Returns None (and writes
    nothing) when there is no epoch to draw."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    keys = [
        k
        for k in PANELS
        if any(
            e.get(k) is not None for stages in history.values() for h in stages.values() for e in h
        )
    ]
    if not keys:
        return None
    stages = list(dict.fromkeys(s for fold in history.values() for s in fold))
    colors = {s: f"C{i % 10}" for i, s in enumerate(stages)}
    fig = Figure(figsize=(4.2 * len(keys), 3.6), dpi=110)
    FigureCanvasAgg(fig)
    for i, key in enumerate(keys):
        ax = fig.add_subplot(1, len(keys), i + 1)
        for fold in history.values():
            for stage, epochs in fold.items():
                points = [(e["epoch"], e[key]) for e in epochs if e.get(key) is not None]
                if points:
                    x, y = zip(*points, strict=True)
                    ax.plot(x, y, color=colors[stage], alpha=0.7, lw=1)
        ax.set_title(key)
        ax.set_xlabel("epoch")
    handles = [fig.axes[0].plot([], [], color=colors[s], label=s)[0] for s in stages]
    fig.legend(handles=handles, loc="upper right", fontsize="small", frameon=False)
    fig.tight_layout(rect=(0, 0, 0.88, 1))
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
