"""Seed-style YAML configs are accepted as-is; bad ones get clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from gmt_model.method.config import ConfigError, load_router_config, load_train_config

from conftest import REPO


def test_seed_train_config_accepted_as_is():
    cfg = load_train_config(REPO / "configs/model_config_train/gmtrouter.yaml", relative_to=REPO)
    assert cfg.dataset_name == "mt_bench"
    assert (cfg.epochs, cfg.lr, cfg.prediction_count, cfg.objective, cfg.binary) == (350, 5e-4, 256, "auc", True)
    assert (cfg.eval_every, cfg.seed, cfg.num_gnn_layers, cfg.hidden_dim, cfg.dropout) == (5, 136, 2, 128, 0.1)
    assert cfg.personalization is True and cfg.save_every == 25 and cfg.loss == "pairwise"
    assert cfg.split_paths()["training"] == str(REPO / "data/mt_bench/training_set.jsonl")
    # the seed names a .pt file; our checkpoint is the folder next to it without the suffix
    assert cfg.model_dir == REPO / "saved_models/gmtrouter/gmtrouter"
    test = load_router_config(REPO / "configs/model_config_test/gmtrouter.yaml", relative_to=REPO)
    assert Path(test.checkpoint) == cfg.model_dir


def test_unknown_and_ill_typed_keys(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  epochs: 10\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"c.yaml: train.learning_rate: unknown key"):
        load_train_config(p)
    p.write_text("train:\n  epochs: ten\n")
    with pytest.raises(ConfigError, match=r"train.epochs: expected int"):
        load_train_config(p)
    p.write_text("train:\n  objective: f1\n")
    with pytest.raises(ConfigError, match="train.objective"):
        load_train_config(p)
    p.write_text("gmt_config:\n  relations: [user__likes__llm]\n")
    with pytest.raises(ValueError, match="unknown relation"):
        load_train_config(p)
    p.write_text("gmt_config:\n  relations: full\n  personalization: false\ntrain:\n  binary: false\n")
    cfg = load_train_config(p, overrides={"epochs": 3})
    assert cfg.relations == "full" and cfg.personalization is False and cfg.loss == "ce" and cfg.epochs == 3
    with pytest.raises(ConfigError, match="config file not found"):
        load_train_config(tmp_path / "missing.yaml")


def test_router_config_requires_checkpoint(tmp_path):
    p = tmp_path / "t.yaml"
    p.write_text("router:\n  device: cpu\n")
    with pytest.raises(ConfigError, match="load_model_path"):
        load_router_config(p)
    p.write_text("model_path:\n  load_model_path: m/x.pt\nrouter:\n  colour: red\n")
    with pytest.raises(ConfigError, match="unknown keys"):
        load_router_config(p)
