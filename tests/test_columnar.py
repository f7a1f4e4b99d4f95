"""The columnar form: JSONL import/export in bounded batches, errors as the JSONL reader reports them,
the manifest's sha256 check."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import planted_records, write_records
from gmt_model.data import columnar as C
from gmt_model.data.jsonl import FormatError, iter_records, validate_file, write_jsonl
from gmt_model.data.embeddings import EmbeddingStore, text_hash
from gmt_model.method.schema import SPLIT_FILES, SPLITS


@pytest.fixture(scope="module")
def jsonl(tmp_path_factory) -> dict[str, Path]:
    """Planted records written by write_jsonl (canonical float text), with an encoder name."""
    raw = write_records(tmp_path_factory.mktemp("raw"), planted_records(n_users=8, groups_per_user=(3, 6)))
    out = tmp_path_factory.mktemp("canon")
    paths = {}
    for s, p in raw.items():
        recs = [json.loads(x) | {"encoder": "planted"} for x in p.read_text().splitlines()]
        paths[s] = out / SPLIT_FILES[s]
        write_jsonl(paths[s], recs)
    return paths


def test_round_trip_is_byte_identical_in_small_batches(jsonl, tmp_path):
    summ = C.import_jsonl(jsonl, tmp_path / "col", batch_rows=7)
    for s in SPLITS:
        v = validate_file(jsonl[s])
        got = summ.splits[s]
        assert (got.n_records, got.n_groups, got.n_interactions, got.n_pairs) == \
            (v.n_records, v.n_groups, v.n_interactions, v.n_pairs)
        assert sorted(got.judges) == v.judges and sorted(got.models) == v.models
    assert summ.encoder == "planted" and summ.dim == 16
    pf = pq.ParquetFile(tmp_path / "col" / C.INTERACTIONS_FILE)
    assert pf.num_row_groups > 3  # written in batches, not all at once
    store = EmbeddingStore.open(tmp_path / "col" / C.IMPORTED_EMBEDDINGS_FILE)
    assert store.encoder == "planted"
    # each distinct query text is stored once
    texts = {json.loads(x)["conversation"][i]["query"] for p in jsonl.values() for x in p.read_text().splitlines()
             for i in range(len(json.loads(x)["conversation"]))}
    assert summ.n_texts == len(texts) + len(summ.llms)
    back = C.export_jsonl(tmp_path / "col", tmp_path / "out", store, batch_rows=5)
    for s in SPLITS:
        assert back[s].read_bytes() == jsonl[s].read_bytes(), s


def test_interactions_table_schema_and_order(jsonl, tmp_path):
    C.import_jsonl(jsonl, tmp_path / "col")
    t = pq.read_table(tmp_path / "col" / C.INTERACTIONS_FILE)
    assert t.schema.equals(C.INTERACTIONS_SCHEMA, check_metadata=False)
    split = t.column("split").to_numpy()
    assert (np.diff(split) >= 0).all()  # training, valid, test
    rec = t.column("record_idx").to_numpy()
    assert (np.diff(rec) >= 0).all() and (np.diff(t.column("group_idx").to_numpy()) >= 0).all()
    first = next(iter_records(jsonl["training"]))
    assert t.column("query_hash")[0].as_py() == text_hash(first.conversation[0].query)
    assert t.column("line")[0].as_py() == 1


def test_import_errors_are_the_readers_one_line_errors(jsonl, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    lines = jsonl["valid"].read_text().splitlines()
    rec = json.loads(lines[2])
    rec["conversation"][0]["rating"] = "high"
    lines[2] = json.dumps(rec)
    (bad / "valid_set.jsonl").write_text("\n".join(lines) + "\n")
    paths = dict(jsonl, valid=bad / "valid_set.jsonl")
    with pytest.raises(FormatError) as ei:
        C.import_jsonl(paths, tmp_path / "col")
    with pytest.raises(FormatError) as ref:
        validate_file(bad / "valid_set.jsonl")
    assert str(ei.value) == str(ref.value)
    assert str(ei.value).startswith(f"{bad / 'valid_set.jsonl'}:3: field 'conversation[0].rating'")
    # nothing half-written is left behind
    assert not (tmp_path / "col").exists() or not any((tmp_path / "col").iterdir())


def test_import_refuses_splits_with_different_encoders(jsonl, tmp_path):
    other = tmp_path / "test_set.jsonl"
    write_jsonl(other, [json.loads(x) | {"encoder": "other"} for x in jsonl["test"].read_text().splitlines()])
    with pytest.raises(FormatError, match="expected one encoder for all splits"):
        C.import_jsonl(dict(jsonl, test=other), tmp_path / "col")


def test_manifest_verification_refuses_a_changed_file(jsonl, tmp_path):
    col = tmp_path / "col"
    summ = C.import_jsonl(jsonl, col)
    entries = C.file_entries(col, summ.files)
    C.verify_files(col, entries)
    p = col / C.INTERACTIONS_FILE
    data = bytearray(p.read_bytes())
    data[100] ^= 1
    p.write_bytes(bytes(data))
    with pytest.raises(C.ManifestError) as ei:
        C.verify_files(col, entries, manifest=col / "manifest.json")
    msg = str(ei.value)
    assert "\n" not in msg and str(p) in msg and "does not match the manifest" in msg
    p.unlink()
    with pytest.raises(C.ManifestError, match="missing"):
        C.verify_files(col, entries)


def test_graph_from_columnar_equals_the_graph_built_from_jsonl(jsonl, tmp_path):
    from gmt_model.data.graph_files import build_graph

    C.import_jsonl(jsonl, tmp_path / "col")
    ref = build_graph(jsonl)
    g = C.graph_from_columnar(tmp_path / "col", tmp_path / "col" / C.IMPORTED_EMBEDDINGS_FILE)
    assert g.user_ids == ref.user_ids and g.llm_names == ref.llm_names
    for name in ("user", "llm", "group", "record", "step", "turn", "split", "rating", "raw_rating", "prev",
                 "line", "pair_a", "pair_b", "pair_label"):
        np.testing.assert_array_equal(getattr(g, name), getattr(ref, name), err_msg=name)
    np.testing.assert_array_equal(g.query_emb, ref.query_emb)
    np.testing.assert_array_equal(g.llm_emb, ref.llm_emb)
    assert g.query_text == ref.query_text and list(g.response_text) == list(ref.response_text)
    assert g.encoder == ref.encoder == "planted" and g.check() == []


def _synthetic(folder: Path, groups: int) -> dict[str, Path]:
    """``groups`` two-record groups over a fixed set of 50 texts, 10 users, 4 LLMs (width 8)."""
    from gmt_model.data.jsonl import Record, Turn

    rng = np.random.default_rng(0)
    vec = rng.normal(size=(50, 8)).astype(np.float32)
    llm = rng.normal(size=(4, 8)).astype(np.float32)
    paths = {}
    for code, split in enumerate(SPLITS):
        def records(code=code):
            line = 0
            for g in range(code, groups, 3):
                t = g % 50
                for m in (g % 4, (g + 1) % 4):
                    line += 1
                    yield Record(line, f"u{g % 10}", f"m{m}", f"q{g}", 1,
                                 (Turn(f"text {t}", vec[t], "r", float(g % 5)),), llm[m], None)
        paths[split] = folder / SPLIT_FILES[split]
        write_jsonl(paths[split], records())
    return paths


def test_import_memory_does_not_grow_with_the_file(tmp_path):
    """Bounded batches: importing 4x the records (same distinct texts and users) adds only the per-group
    bookkeeping to the peak Python memory, not the rows."""
    import gc
    import tracemalloc

    # a first import outside the measurement: lazy imports and caches filled once are not the file's rows
    C.import_jsonl(_synthetic(tmp_path / "warm", 60), tmp_path / "colwarm", batch_rows=100)
    peaks = []
    for n in (600, 2400):
        src = _synthetic(tmp_path / f"src{n}", n)
        gc.collect()
        tracemalloc.start()
        summ = C.import_jsonl(src, tmp_path / f"col{n}", batch_rows=100)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert sum(s.n_records for s in summ.splits.values()) == 2 * n
    # what may grow is per-group bookkeeping (the group keys seen, for repeated-key checks: ~90 bytes a
    # group); holding the rows would cost their records, turns and arrays (~500 bytes a record here)
    per_record = (peaks[1] - peaks[0]) / (2 * (2400 - 600))
    assert per_record < 100, (peaks, per_record)
