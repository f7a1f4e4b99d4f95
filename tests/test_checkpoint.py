"""Checkpoints: exact save/load, pickle-free loading, refusal of damaged files."""

from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pytest
import torch

from gmt_model.method import schema as S
from gmt_model.method.checkpoint import CheckpointError, History, load_checkpoint, save_checkpoint
from gmt_model.method.model import GMTModel, ModelConfig
from gmt_model.method.training import predict_groups


@pytest.fixture
def saved(planted_graph, tmp_path):
    torch.manual_seed(0)
    model = GMTModel(ModelConfig(embed_dim=planted_graph.dim, hidden_dim=32, predictor_dim=32, num_gnn_layers=2))
    d = save_checkpoint(tmp_path / "ck", model, users=planted_graph.user_ids, llms=planted_graph.llm_names,
                        history=History.from_graph(planted_graph, planted_graph.split_mask(S.SPLIT_TRAIN)),
                        encoder="enc", rating_scale=(0.0, 5.0), meta={"epoch": 7})
    return model, d


def test_save_load_reproduces_scores_exactly(saved, planted_graph, monkeypatch):
    model, d = saved
    # loading must never unpickle: make every unpickling path fail loudly
    def no_pickle(*a, **k):
        raise AssertionError("unpickling attempted")

    monkeypatch.setattr(torch, "load", no_pickle)
    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    ck = load_checkpoint(d)
    monkeypatch.undo()
    assert ck.users == planted_graph.user_ids and ck.llms == planted_graph.llm_names
    assert ck.encoder == "enc" and ck.rating_scale == (0.0, 5.0) and ck.meta["epoch"] == 7
    dev = torch.device("cpu")
    _, s1, _ = predict_groups(model, planted_graph, S.SPLIT_TEST, dev)
    _, s2, _ = predict_groups(ck.model, planted_graph, S.SPLIT_TEST, dev)
    np.testing.assert_array_equal(s1, s2)
    np.testing.assert_array_equal(ck.history.query_emb, planted_graph.query_emb[planted_graph.split_mask("training")])
    assert sorted(p.name for p in d.iterdir()) == ["config.json", "history.safetensors", "model.safetensors"]


def test_truncated_weights_refused(saved):
    _, d = saved
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r"model.safetensors: \d+ bytes, expected \d+ \(truncated"):
        load_checkpoint(d)


def test_tampered_weights_refused(saved):
    _, d = saved
    w = d / "model.safetensors"
    b = bytearray(w.read_bytes())
    b[-5] ^= 0xFF
    w.write_bytes(bytes(b))
    with pytest.raises(CheckpointError, match=r"sha256 .* \(modified\)"):
        load_checkpoint(d)


def test_tampered_config_refused(saved):
    _, d = saved
    cfg = json.loads((d / "config.json").read_text())
    cfg["model"]["hidden_dim"] = 48
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="shape"):
        load_checkpoint(d)
    (d / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(d)


def test_pickle_file_in_place_of_weights_refused(saved, tmp_path):
    _, d = saved
    evil = tmp_path / "evil.pt"
    torch.save({"x": torch.zeros(1)}, evil)
    shutil.copy(evil, d / "model.safetensors")
    with pytest.raises(CheckpointError):
        load_checkpoint(d)


def test_missing_folder_and_wrong_format(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint folder not found"):
        load_checkpoint(tmp_path / "nope")
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "config.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(CheckpointError, match="field 'format'"):
        load_checkpoint(tmp_path / "x")


def test_overwrite_is_atomic(saved, planted_graph, monkeypatch):
    model, d = saved
    before = (d / "config.json").read_text()
    import gmt_model.method.checkpoint as ckmod

    def fail(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ckmod, "save_file", fail)
    with pytest.raises(OSError):
        save_checkpoint(d, model, users=planted_graph.user_ids, llms=planted_graph.llm_names,
                        history=History.from_graph(planted_graph, planted_graph.split_mask("training")),
                        encoder="enc", rating_scale=(0.0, 5.0))
    assert (d / "config.json").read_text() == before
    assert not [p for p in d.parent.iterdir() if p.name.startswith(".ck")]
    load_checkpoint(d)
