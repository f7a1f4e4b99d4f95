"""Pickle-free checkpoints: a folder of JSON + safetensors.

```
<dir>/config.json          format, ModelConfig, id maps (users, llms), encoder, rating scale,
                           training metadata, sha256 of every other file
<dir>/model.safetensors    model weights
<dir>/history.safetensors  the user histories the router embeds users from
                           (user, llm, rating, prev, group per interaction; the query
                           embeddings deduplicated as text_emb (float32, or float16 when the
                           graph stores float16) + query_row; llm_emb)
```

Loading parses JSON and safetensors only (never ``torch.load``/pickle),
verifies each file's sha256 and size against ``config.json``, rebuilds the
model from its config and checks every weight's name and shape.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from gmt_model.atomic import atomic_file, file_sha256, replace_dir
from gmt_model.method.model import GMTModel, ModelConfig

__all__ = ["Checkpoint", "History", "CheckpointError", "save_checkpoint", "load_checkpoint", "file_sha256", "update_meta"]

FORMAT = "gmtrouter-checkpoint/1"
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
HISTORY = "history.safetensors"


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, tampered with or inconsistent."""


class History:
    """Interactions whose ratings are known: what user representations are computed from.

    The router's view of the interactions table (the rows of the training
    split): ``user``, ``llm``, ``rating`` (normalised), ``prev`` (index into
    this history, -1 if none), ``group`` (comparison key) and the query
    embeddings.  Those are held either as ``query_emb`` (n, d), or
    deduplicated as ``text_emb`` (T, d) plus ``query_row`` (n,) (what
    training writes: n int64s instead of n x d floats); ``query_emb`` is then
    materialised on first access (the live router copies it into its own
    growing buffer anyway).
    """

    _COLUMNS = ("user", "llm", "rating", "prev", "llm_emb", "group")

    def __init__(self, user: np.ndarray, llm: np.ndarray, rating: np.ndarray, prev: np.ndarray,
                 query_emb: np.ndarray | None = None, llm_emb: np.ndarray | None = None,
                 group: np.ndarray | None = None, *, text_emb: np.ndarray | None = None,
                 query_row: np.ndarray | None = None) -> None:
        if llm_emb is None:
            raise TypeError("History: llm_emb is required")
        if query_emb is None and (text_emb is None or query_row is None):
            raise TypeError("History: give query_emb, or text_emb and query_row")
        self.user, self.llm, self.rating, self.prev = user, llm, rating, prev
        self.llm_emb = llm_emb
        self._query_emb = query_emb
        self.text_emb = text_emb
        self.query_row = query_row
        #: int64 (n,) comparison key: rows rated together for one query (group and step); None in
        #: checkpoints written before it existed (then derived from user + query embedding)
        self.group = group if group is not None else derive_groups(user, self.query_emb)

    @property
    def query_emb(self) -> np.ndarray:
        """float32 (n, d) query embedding of every row (materialised once from the text table if deduplicated)."""
        if self._query_emb is None:
            self._query_emb = np.asarray(self.text_emb, dtype=np.float32)[self.query_row]
        return self._query_emb

    @property
    def deduplicated(self) -> bool:
        return self.text_emb is not None and self.query_row is not None

    def __repr__(self) -> str:
        return (f"History(n={self.user.shape[0]}, llms={self.llm_emb.shape[0]}, "
                f"texts={None if self.text_emb is None else self.text_emb.shape[0]})")

    def to_tensors(self) -> dict[str, torch.Tensor]:
        names = self._COLUMNS + (("text_emb", "query_row") if self.deduplicated else ("query_emb",))
        return {k: torch.from_numpy(np.ascontiguousarray(getattr(self, k))) for k in names}

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor]) -> "History":
        names = cls._COLUMNS + ("query_emb", "text_emb", "query_row")
        return cls(**{k: t[k].numpy() for k in names if k in t})

    @classmethod
    def from_graph(cls, g, mask: np.ndarray) -> "History":
        """The rows of ``g`` selected by ``mask``, with the graph's deduplicated
        query texts restricted to the rows they use."""
        idx = np.flatnonzero(mask)
        local = np.full(g.num_interactions, -1, dtype=np.int64)
        local[idx] = np.arange(idx.size)
        prev = g.prev[idx]
        prev = np.where(prev >= 0, local[np.maximum(prev, 0)], -1)
        used, query_row = np.unique(g.query_row[idx], return_inverse=True)
        return cls(user=g.user[idx].astype(np.int64), llm=g.llm[idx].astype(np.int64),
                   rating=g.rating[idx].astype(np.float32), prev=prev.astype(np.int64),
                   llm_emb=g.llm_emb.astype(np.float32), group=comparison_keys(g, idx),
                   text_emb=_stored(g.text_emb[used]),
                   query_row=query_row.reshape(-1).astype(np.int64))


def _stored(text_emb: np.ndarray) -> np.ndarray:
    """A history's text table as the graph stores it: float16 stays float16 (half the checkpoint; readers
    convert the rows they use), anything else float32."""
    a = np.asarray(text_emb)
    return a if a.dtype == np.float16 else np.asarray(a, dtype=np.float32)


def comparison_keys(g, idx: np.ndarray) -> np.ndarray:
    """One key per (group, step): the interactions compared with each other."""
    steps = int(g.step.max()) + 1 if g.step.size else 1
    return (g.group[idx].astype(np.int64) * steps + g.step[idx].astype(np.int64)).astype(np.int64)


def derive_groups(user: np.ndarray, query_emb: np.ndarray) -> np.ndarray:
    """Comparison keys from (user, query embedding) for histories without a group column."""
    if user.size == 0:
        return np.zeros(0, np.int64)
    q = np.ascontiguousarray(query_emb, dtype=np.float32).view(np.uint8).reshape(user.size, -1)
    key = np.concatenate([np.asarray(user, np.int64).view(np.uint8).reshape(user.size, -1), q], axis=1)
    _, inv = np.unique(key, axis=0, return_inverse=True)
    return inv.reshape(-1).astype(np.int64)


@dataclass
class Checkpoint:
    model: GMTModel
    users: list[str]
    llms: list[str]
    history: History
    encoder: str | None
    rating_scale: tuple[float, float]
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def config(self) -> ModelConfig:
        return self.model.cfg


def save_checkpoint(directory: str | Path, model: GMTModel, *, users: list[str], llms: list[str],
                    history: History, encoder: str | None, rating_scale: tuple[float, float],
                    meta: dict[str, Any] | None = None, extra_files: dict[str, dict[str, torch.Tensor]] | None = None,
                    extra_json: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint folder atomically (temporary sibling, then rename).

    ``extra_files`` are more safetensors files (name -> tensors), e.g. the
    optimiser state of a resumable checkpoint; ``extra_json`` goes into
    ``config.json`` under ``extra``.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS))
        save_file(history.to_tensors(), str(tmp / HISTORY))
        for name, tensors in (extra_files or {}).items():
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / name))
        files = {p.name: {"sha256": file_sha256(p), "bytes": p.stat().st_size} for p in sorted(tmp.iterdir())}
        cfg = {
            "format": FORMAT,
            "model": model.cfg.to_dict(),
            "users": list(users),
            "llms": list(llms),
            "encoder": {"name": encoder, "dim": model.cfg.embed_dim},
            "rating_scale": [float(rating_scale[0]), float(rating_scale[1])],
            "meta": meta or {},
            "extra": extra_json or {},
            "files": files,
        }
        (tmp / CONFIG).write_text(json.dumps(cfg, indent=2, sort_keys=True))
        replace_dir(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def update_meta(directory: str | Path, values: dict[str, Any]) -> None:
    """Merge ``values`` into a checkpoint's ``config.json`` meta (atomic rewrite;
    the other files and their digests are unchanged)."""
    d = Path(directory)
    cfg = read_config(d)
    cfg["meta"] = {**cfg.get("meta", {}), **values}
    with atomic_file(d / CONFIG, "w", fsync=False) as f:
        f.write(json.dumps(cfg, indent=2, sort_keys=True))


def read_config(directory: str | Path) -> dict[str, Any]:
    d = Path(directory)
    p = d / CONFIG
    if not d.is_dir():
        raise CheckpointError(f"{d}: checkpoint folder not found")
    if not p.exists():
        raise CheckpointError(f"{d}: not a gmtrouter checkpoint (no {CONFIG})")
    try:
        cfg = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{p}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise CheckpointError(f"{p}: field 'format': expected {FORMAT!r}, got {cfg.get('format') if isinstance(cfg, dict) else cfg!r}")
    for key in ("model", "users", "llms", "encoder", "rating_scale", "files"):
        if key not in cfg:
            raise CheckpointError(f"{p}: field {key!r}: missing")
    return cfg


def verify_files(directory: Path, cfg: dict[str, Any], names: list[str]) -> None:
    for name in names:
        p = directory / name
        info = cfg["files"].get(name)
        if info is None:
            raise CheckpointError(f"{directory / CONFIG}: field 'files.{name}': missing")
        if not p.exists():
            raise CheckpointError(f"{p}: missing")
        size = p.stat().st_size
        if size != info.get("bytes"):
            raise CheckpointError(f"{p}: {size} bytes, expected {info.get('bytes')} (truncated or replaced)")
        digest = file_sha256(p)
        if digest != info.get("sha256"):
            raise CheckpointError(f"{p}: sha256 {digest[:12]}..., expected {str(info.get('sha256'))[:12]}... (modified)")


def load_tensors(directory: Path, cfg: dict[str, Any], name: str) -> dict[str, torch.Tensor]:
    verify_files(directory, cfg, [name])
    try:
        return load_file(str(directory / name))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{directory / name}: unreadable safetensors ({e})") from None


def load_checkpoint(directory: str | Path, *, device: str | torch.device = "cpu") -> Checkpoint:
    """Rebuild model, id maps and histories. Never unpickles anything."""
    d = Path(directory)
    cfg = read_config(d)
    try:
        mcfg = ModelConfig(**cfg["model"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{d / CONFIG}: field 'model': {e}") from None
    model = GMTModel(mcfg)
    state = load_tensors(d, cfg, WEIGHTS)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{d / WEIGHTS}: weights do not match the config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for k, v in state.items():
        if v.shape != expected[k].shape:
            raise CheckpointError(f"{d / WEIGHTS}: {k}: shape {tuple(v.shape)}, expected {tuple(expected[k].shape)}")
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise CheckpointError(f"{d / WEIGHTS}: {k}: non-finite values")
    model.load_state_dict(state)
    model.to(device).eval()
    hist = History.from_tensors(load_tensors(d, cfg, HISTORY))
    n_users, n_llms = len(cfg["users"]), len(cfg["llms"])
    if hist.llm_emb.shape != (n_llms, mcfg.embed_dim):
        raise CheckpointError(f"{d / HISTORY}: llm_emb shape {hist.llm_emb.shape}, expected ({n_llms}, {mcfg.embed_dim})")
    if hist.user.size and (hist.user.max() >= n_users or hist.user.min() < 0):
        raise CheckpointError(f"{d / HISTORY}: user index out of range")
    if hist.llm.size and (hist.llm.max() >= n_llms or hist.llm.min() < 0):
        raise CheckpointError(f"{d / HISTORY}: llm index out of range")
    if hist.deduplicated and hist.query_row.size and (
            hist.query_row.min() < 0 or hist.query_row.max() >= hist.text_emb.shape[0]):
        raise CheckpointError(f"{d / HISTORY}: query_row out of range [0, {hist.text_emb.shape[0]})")
    lo, hi = cfg["rating_scale"]
    return Checkpoint(model=model, users=list(cfg["users"]), llms=list(cfg["llms"]), history=hist,
                      encoder=cfg["encoder"].get("name"), rating_scale=(float(lo), float(hi)),
                      meta=dict(cfg.get("meta", {})), path=d)
