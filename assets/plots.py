"""Training curves as a PNG (matplotlib's Agg canvas; no global backend switch, no display)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from gmt_model.atomic import atomic_path

__all__ = ["plot_training_curves"]


def _series(history: Sequence[Mapping[str, float]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for row in history:
        v = row.get(key)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        xs.append(float(row["epoch"]))
        ys.append(float(v))
    return xs, ys


def plot_training_curves(histories: Mapping[str, Sequence[Mapping[str, float]]], path: str | os.PathLike[str],
                         title: str = "") -> Path:
    """Plot train loss and validation AUC / accuracy per epoch of each named history; write ``path`` atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax_loss, ax_auc, ax_acc = fig.subplots(1, 3)
    for name, hist in histories.items():
        for ax, key in ((ax_loss, "train_loss"), (ax_auc, "val_auc"), (ax_acc, "val_accuracy")):
            xs, ys = _series(hist, key)
            if xs:
                ax.plot(xs, ys, marker="." if len(xs) < 60 else None, label=name)
    for ax, label in ((ax_loss, "train loss"), (ax_auc, "validation AUC"), (ax_acc, "validation accuracy")):
        ax.set_xlabel("epoch")
        ax.set_title(label)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    target = Path(path)
    with atomic_path(target, suffix=".png", fsync=False) as tmp:
        fig.savefig(tmp, format="png")
    return target
