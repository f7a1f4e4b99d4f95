"""Dagster metadata shared by the asset modules: JSON, Markdown tables, the inline training curves, and
the per-epoch progress lines of a training step."""

from __future__ import annotations

import base64
import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import dagster as dg

__all__ = ["json_md", "thin_users_md", "png_md", "curves_md", "CURVES_INLINE_MAX", "TrainingProgress"]

#: the Dagster UI (1.13) renders a Markdown metadata value inline on the asset page when it is shorter than
#: 1000 characters, and behind "[Show Markdown]" otherwise
CURVES_INLINE_MAX = 999
#: largest PNG embedded into asset metadata (base64 in the event log); bigger ones are linked only
_PNG_EMBED_MAX_BYTES = 400_000
_BARS = "▁▂▃▄▅▆▇█"
#: (series, lower is better) shown inline, in this order
_CURVES = (("val_auc", False), ("val_accuracy", False), ("train_loss", True))


def json_md(obj: Mapping[str, Any]) -> dg.MetadataValue:
    """A JSON metadata value of anything JSON-able (paths and numpy scalars as text)."""
    return dg.MetadataValue.json(json.loads(json.dumps(obj, default=str)))


def thin_users_md(thin: Mapping[str, int], limit: int = 50) -> str:
    """Markdown table of the users with few training groups."""
    if not thin:
        return "No thin users."
    rows = ["| user | training groups |", "|---|---:|"]
    rows += [f"| {u} | {n} |" for u, n in sorted(thin.items(), key=lambda kv: (kv[1], kv[0]))[:limit]]
    if len(thin) > limit:
        rows.append(f"| ... {len(thin) - limit} more | |")
    return "\n".join(rows)


def png_md(path: Path, alt: str) -> dg.MetadataValue:
    """A PNG as Markdown with the image as a base64 data URI (opens with "[Show Markdown]")."""
    data = path.read_bytes()
    if len(data) > _PNG_EMBED_MAX_BYTES:
        return dg.MetadataValue.md(f"{alt}: {path} ({len(data)} bytes, too large to embed)")
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(data).decode('ascii')})")


def _points(history: Sequence[Mapping[str, float]], key: str) -> list[tuple[int, float]]:
    out = []
    for row in history:
        v = row.get(key)
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            out.append((int(row["epoch"]), float(v)))
    return out


def _spark(values: Sequence[float], width: int) -> str:
    if len(values) > width:  # mean of equal slices
        step = len(values) / width
        values = [sum(values[int(i * step):max(int((i + 1) * step), int(i * step) + 1)])
                  / len(values[int(i * step):max(int((i + 1) * step), int(i * step) + 1)]) for i in range(width)]
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12:
        return _BARS[3] * len(values)
    return "".join(_BARS[min(7, int((v - lo) / (hi - lo) * 8))] for v in values)


def curves_md(histories: Mapping[str, Sequence[Mapping[str, float]]], width: int = 24) -> str:
    """The training curves as a Markdown table of sparklines (first, best and last value of each series)
    that the Dagster UI shows inline: at most :data:`CURVES_INLINE_MAX` characters."""
    while True:
        rows = ["| model | series | epochs | curve | first | best (epoch) | last |", "|---|---|---:|---|---:|---:|---:|"]
        for name, hist in histories.items():
            for key, lower in _CURVES:
                pts = _points(hist, key)
                if not pts:
                    continue
                ys = [y for _, y in pts]
                best = (min if lower else max)(range(len(pts)), key=lambda i: ys[i])
                rows.append(f"| {name} | {key} | {pts[0][0]}–{pts[-1][0]} | {_spark(ys, width)} | {ys[0]:.3f} "
                            f"| {ys[best]:.3f} ({pts[best][0]}) | {ys[-1]:.3f} |")
        text = "\n".join(rows)
        if len(text) <= CURVES_INLINE_MAX or width <= 4:
            return text[:CURVES_INLINE_MAX]
        width //= 2


class TrainingProgress:
    """Per-epoch callback: a progress line per model every 25 epochs or 15 s (at validation epochs)."""

    def __init__(self, context: dg.AssetExecutionContext, dataset: str, every_epochs: int = 25,
                 every_s: float = 15.0) -> None:
        self.context, self.dataset, self.every_epochs, self.every_s = context, dataset, every_epochs, every_s
        self.last: dict[str, tuple[int, float]] = {}
        self.prev: dict[str, tuple[int, Mapping[str, float]]] = {}

    def __call__(self, name: str, epoch: int, row: Mapping[str, float]) -> None:
        # training may add an epoch's validation metrics to its row after this call: look at the row of the
        # previous call too (complete by now)
        prev = self.prev.get(name)
        self.prev[name] = (epoch, row)
        for ep, r in ((prev or (None, None)), (epoch, row)):
            if ep is not None:
                self._maybe_log(name, ep, r)

    def _maybe_log(self, name: str, epoch: int, row: Mapping[str, float]) -> None:
        now = time.monotonic()
        last_epoch, last_t = self.last.setdefault(name, (0, now))
        if "val_auc" not in row or epoch <= last_epoch or (epoch - last_epoch < self.every_epochs
                                                           and now - last_t < self.every_s):
            return
        self.last[name] = (epoch, now)
        self.context.log.info(f"{self.dataset} {name} epoch {epoch}: val_auc={row['val_auc']:.4f} "
                              f"train_loss={row['train_loss']:.4f}")
