"""The columnar data path of the pipeline with a hashed test encoder (fast, no model): each split parsed
once per run, manifests refusing changed files, and the partitioned embedding asset materialised through
Dagster, merged into a store equal to a single-process embedding."""

from __future__ import annotations

import contextlib
import collections
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

dg = pytest.importorskip("dagster")

import gmt_model.data.jsonl as D  # noqa: E402
from assets import data_steps  # noqa: E402
from assets.resources import EncoderResource, PathsResource  # noqa: E402
from assets.storage import DataStore  # noqa: E402
from conftest import planted_records  # noqa: E402
from gmt_model.data import columnar as C  # noqa: E402
from gmt_model.data.jsonl import write_jsonl  # noqa: E402
from gmt_model.data.embeddings import EmbeddingStore  # noqa: E402
from gmt_model.serving.feedback import FeedbackLog  # noqa: E402
from gmt_model.method.schema import SPLIT_FILES, SPLITS  # noqa: E402


class HashEncoder:
    """Deterministic test encoder: a text's sha256 bytes as a unit vector (no model)."""

    name = "hash-test-16"
    dim = 16

    def __init__(self) -> None:
        self.calls = 0
        self.texts = 0

    def encode(self, texts):
        self.calls += 1
        self.texts += len(texts)
        raw = np.stack([np.frombuffer(hashlib.sha256(t.encode()).digest()[:16], np.uint8) for t in texts])
        v = raw.astype(np.float32) - 127.5
        return v / np.linalg.norm(v, axis=1, keepdims=True)


ENC = HashEncoder()


class HashEncoderResource(EncoderResource):
    def get(self, override=None):
        return ENC


@pytest.fixture()
def splits_source(tmp_path: Path) -> Path:
    """A local folder of JSONL splits written with the hash encoder's name (so they are imported as-is)."""
    folder = tmp_path / "splits"
    for s, rows in planted_records(n_users=6, groups_per_user=(4, 6), dim=16).items():
        write_jsonl(folder / SPLIT_FILES[s], [r | {"encoder": ENC.name} for r in rows])
    return folder


@pytest.fixture()
def parses(monkeypatch: pytest.MonkeyPatch) -> collections.Counter:
    """Counts every parse of a JSONL file (``gmt_model.data.jsonl.iter_records``, which every reader goes through)."""
    counts: collections.Counter = collections.Counter()
    original = D.iter_records

    def counting(path, **kw):
        counts[Path(path).name] += 1
        return original(path, **kw)

    monkeypatch.setattr(D, "iter_records", counting)
    return counts


def _feedback_log(path: Path) -> Path:
    with FeedbackLog(path) as log:
        log.append("user0", "a new question", "m0", 5.0)
        log.append("user0", "a new question", "m1", 1.0)
    return path


def run_data_path(store: DataStore, source: Path, feedback: Path | None = None) -> dict:
    data_steps.materialize_raw(store, overrides={"kind": "jsonl_splits", "url": str(source)})
    m = data_steps.materialize_interactions(store, ENC, feedback_log=feedback)
    assert data_steps.check_interactions_valid(store)[0]
    data_steps.materialize_text_embeddings(store, ENC)
    ok, meta = data_steps.check_embedding_width(store, ENC)
    assert ok, meta
    data_steps.materialize_graph(store)
    assert data_steps.check_graph_integrity(store)[0]
    return m


def test_each_split_is_parsed_once_per_run(tmp_path, splits_source, parses):
    """Before the columnar path a run parsed the training split 5 times (8 with a feedback log)."""
    store = DataStore("demo", tmp_path / "data")
    m = run_data_path(store, splits_source, _feedback_log(tmp_path / "fb.sqlite"))
    assert parses == {SPLIT_FILES[s]: 1 for s in SPLITS}, dict(parses)
    assert m["mode"] == "imported" and m["feedback"]["rows_merged"] == 2
    # the imported embeddings are used, only the feedback's new query is embedded
    em = store.read_manifest("embeddings")
    assert em["sources"]["embedded_now"] == 1
    assert em["sources"]["from_import"] == em["n_texts"] - 1


def test_manifest_refuses_a_changed_file_downstream(tmp_path, splits_source):
    store = DataStore("demo", tmp_path / "data")
    run_data_path(store, splits_source)
    p = store.area("interactions") / C.INTERACTIONS_FILE
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(C.ManifestError) as ei:
        data_steps.materialize_graph(store)
    msg = str(ei.value)
    assert "\n" not in msg and str(p) in msg and "manifest" in msg
    ok, meta = data_steps.check_interactions_valid(store)
    assert not ok and str(p) in meta["problems"][0]


def test_converted_demo_needs_no_jsonl(tmp_path, parses):
    store = DataStore("demo", tmp_path / "data")
    data_steps.materialize_raw(store, overrides={"size": "tiny"})
    m = data_steps.materialize_interactions(store, ENC)
    data_steps.materialize_text_embeddings(store, ENC)
    data_steps.materialize_graph(store)
    assert not parses and m["mode"] == "converted"
    assert sorted(m["files"]) == [C.INTERACTIONS_FILE, C.LLMS_FILE, C.TEXTS_FILE]
    # exported as GMTRouter JSONL, it is valid and holds what the manifest counted
    out = C.export_jsonl(store.area("interactions"), tmp_path / "jsonl",
                         store.area("embeddings") / data_steps.STORE_FILE)
    for s in SPLITS:
        v = D.validate_file(out[s])
        assert (v.n_groups, v.n_records, v.n_interactions) == tuple(
            m["splits"][s][k] for k in ("n_groups", "n_records", "n_interactions"))
        assert v.encoder == ENC.name and v.dim == ENC.dim


def test_partitioned_embedding_through_dagster_equals_one_process(tmp_path, splits_source):
    from assets import build_dataset_assets, shard_asset_key
    from assets.configs import EmbeddingConfig  # noqa: F401  (the asset's config class)

    # single process: nothing sharded, everything embedded by text_embeddings itself
    ref_store = DataStore("demo", tmp_path / "ref")
    data_steps.materialize_raw(ref_store, overrides={"size": "tiny"})
    data_steps.materialize_interactions(ref_store, ENC)
    ref_m = data_steps.materialize_text_embeddings(ref_store, ENC)
    assert ref_m["sources"]["embedded_now"] == ref_m["n_texts"] and ref_m["n_shards_used"] == 0
    ref = EmbeddingStore.open(ref_store.area("embeddings") / data_steps.STORE_FILE)

    # sharded: the same interactions, each of the 16 partitions materialised through Dagster
    store = DataStore("demo", tmp_path / "data")
    data_steps.materialize_raw(store, overrides={"size": "tiny"})
    data_steps.materialize_interactions(store, ENC)
    assets = {a.key: a for a in build_dataset_assets("demo")}
    shards = assets[shard_asset_key("demo")]
    assert shards.partitions_def.get_partition_keys() == list("0123456789abcdef")
    resources = {"paths": PathsResource(home=str(store.root)), "encoder": HashEncoderResource()}
    instance = dg.DagsterInstance.ephemeral()
    for key in shards.partitions_def.get_partition_keys():
        res = dg.materialize([shards], partition_key=key, resources=resources, instance=instance)
        assert res.success
    folder = store.root / "embedding_shards" / "demo"
    assert sorted(p.name for p in folder.glob("*.parquet")) == [f"shard-{k}.parquet" for k in "0123456789abcdef"]
    sizes = [json.loads((folder / f"shard-{k}.json").read_text())["n_texts"] for k in "0123456789abcdef"]
    assert sum(sizes) == ref_m["n_texts"] and max(sizes) < ref_m["n_texts"]

    # the downstream asset merges the shards: nothing left to embed, same vectors as one process
    emb_asset = assets[dg.AssetKey(["demo", "text_embeddings"])]
    res = dg.materialize([emb_asset], resources=resources, instance=instance)
    assert res.success
    m = store.read_manifest("embeddings")
    assert m["n_shards_used"] == 16 and m["sources"]["from_shards"] == m["n_texts"]
    assert m["sources"]["embedded_now"] == 0
    got = EmbeddingStore.open(store.area("embeddings") / data_steps.STORE_FILE)
    assert len(got) == len(ref)
    np.testing.assert_array_equal(got.lookup(ref.hashes), ref.matrix)


def test_stale_shards_are_not_merged(tmp_path, splits_source):
    store = DataStore("demo", tmp_path / "data")
    data_steps.materialize_raw(store, overrides={"size": "tiny"})
    data_steps.materialize_interactions(store, ENC)
    for k in data_steps.SHARD_KEYS:
        data_steps.materialize_embedding_shard(store, ENC, k)
    assert data_steps.materialize_text_embeddings(store, ENC)["n_shards_used"] == 16
    # new texts (a feedback comparison on a new query): the texts table changes, the shards are stale
    from gmt_model.data.demo import LLMS

    with FeedbackLog(tmp_path / "fb.sqlite") as log:
        log.append("user_0001", "a brand new question", LLMS[0], 5.0)
        log.append("user_0001", "a brand new question", LLMS[1], 1.0)
    im = data_steps.materialize_interactions(store, ENC, feedback_log=tmp_path / "fb.sqlite")
    assert im["feedback"]["rows_merged"] == 2
    m = data_steps.materialize_text_embeddings(store, ENC)
    assert m["n_shards_used"] == 0 and m["sources"]["from_shards"] == 0
    # the previous store still saves the work: only the new text is embedded
    assert m["sources"]["embedded_now"] == 1


def test_float16_store_option_and_no_half_precision_reuse(tmp_path):
    store = DataStore("demo", tmp_path / "data")
    data_steps.materialize_raw(store, overrides={"size": "tiny"})
    data_steps.materialize_interactions(store, ENC)
    m16 = data_steps.materialize_text_embeddings(store, ENC, dtype="float16")
    st = EmbeddingStore.open(store.area("embeddings") / data_steps.STORE_FILE)
    assert st.dtype == "float16" and m16["dtype"] == "float16"
    assert data_steps.check_embedding_width(store, ENC)[0]
    g = data_steps.materialize_graph(store)
    assert g["dim"] == ENC.dim
    # back to float32: the float16 vectors are not reused (everything is embedded again, exactly)
    m32 = data_steps.materialize_text_embeddings(store, ENC)
    assert m32["sources"]["from_previous"] == 0 and m32["sources"]["embedded_now"] == m32["n_texts"]
    # float32 -> float32 reuses the previous store
    again = data_steps.materialize_text_embeddings(store, ENC)
    assert again["sources"]["from_previous"] == again["n_texts"] and again["sources"]["embedded_now"] == 0


def test_export_command_writes_valid_jsonl_and_refuses_changed_files(tmp_path, splits_source, capsys):
    from pipelines.export_jsonl import main

    store = DataStore("demo", tmp_path / "data")
    run_data_path(store, splits_source)
    assert main(["demo", str(tmp_path / "out"), "--home", str(store.root)]) == 0
    for s in SPLITS:  # the imported splits come back byte for byte
        assert (tmp_path / "out" / SPLIT_FILES[s]).read_bytes() == (splits_source / SPLIT_FILES[s]).read_bytes()
    p = store.area("embeddings") / data_steps.STORE_FILE
    p.write_bytes(p.read_bytes()[:-10] + b"0123456789")
    capsys.readouterr()
    assert main(["demo", str(tmp_path / "out2"), "--home", str(store.root)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(p) in err and err.count("\n") == 1
    assert not (tmp_path / "out2").exists()


def test_a_dagster_run_parses_each_split_once(tmp_path, splits_source, parses):
    """The same through Dagster: raw_data -> interactions -> text_embeddings -> graph_parquet with their
    blocking checks, in one run, with a feedback log to merge."""
    from assets import build_dataset_assets, build_dataset_checks

    assets = {a.key.path[-1]: a for a in build_dataset_assets("demo")}
    chain = [assets[n] for n in ("raw_data", "interactions", "text_embeddings", "graph_parquet")]
    checks = [c for c in build_dataset_checks("demo")
              if {k.name for k in c.check_keys} & {"interactions_valid", "embedding_width", "graph_integrity"}]

    class NoMLflow(dg.ConfigurableResource):
        @contextlib.contextmanager
        def run(self, *a, **k):
            yield "run"

        def log_params(self, *a, **k):
            pass

        def finish(self, *a, **k):
            pass

    fb = _feedback_log(tmp_path / "fb.sqlite")
    res = dg.materialize(
        [*chain, *checks], instance=dg.DagsterInstance.ephemeral(),
        resources={"paths": PathsResource(home=str(tmp_path / "data")), "encoder": HashEncoderResource(),
                   "mlflow": NoMLflow()},
        run_config={"ops": {"demo__raw_data": {"config": {"kind": "jsonl_splits", "url": str(splits_source)}},
                            "demo__interactions": {"config": {"feedback_log": str(fb)}}}})
    assert res.success
    evals = [e for e in res.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
    assert len(evals) == 3 and all(e.event_specific_data.passed for e in evals)
    assert parses == {SPLIT_FILES[s]: 1 for s in SPLITS}, dict(parses)
