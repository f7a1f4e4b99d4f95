"""Shared fixtures: a planted-preference synthetic dataset (fast, known answer),
the tiny offline demo dataset, and models trained on them once per session."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
MT_BENCH = REPO.parent / "shared" / "data" / "mt_bench_human"


def planted_records(n_users: int = 40, dim: int = 16, n_llms: int = 4, n_topics: int = 4, seed: int = 0,
                    groups_per_user: tuple[int, int] = (12, 30), multi_turn: bool = True) -> dict[str, list[dict]]:
    """Two taste groups with opposite, topic-dependent LLM preferences.

    Averaged over users the preferences cancel, so only a model that reads
    each user's history can predict them.  Returns GMTRouter records per split.
    """
    rng = np.random.default_rng(seed)
    topic_vec = rng.normal(size=(n_topics, dim))
    llm_emb = rng.normal(size=(n_llms, dim))
    taste = np.arange(n_users) % 2
    pref0 = rng.normal(size=(n_topics, n_llms)) * 2.0
    pref = np.stack([pref0, -pref0])
    out: dict[str, list[dict]] = {"training": [], "valid": [], "test": []}
    qid = 0
    for u in range(n_users):
        for _ in range(int(rng.integers(*groups_per_user))):
            t = int(rng.integers(n_topics))
            pair = rng.choice(n_llms, 2, replace=False)
            steps = int(rng.integers(1, 3)) if multi_turn else 1
            qe = [(topic_vec[t] + 0.3 * rng.normal(size=dim)).round(5).tolist() for _ in range(steps)]
            rows = []
            for m in pair:
                conv = []
                for s in range(steps):
                    util = pref[taste[u], t, m] + rng.normal() * 0.5
                    conv.append({"query": f"topic {t} question {qid} step {s}", "query_emb": qe[s],
                                 "response": f"answer of m{m}", "rating": float(np.clip(np.round(util + 2.5), 0, 5))})
                rows.append({"judge": f"user{u}", "model": f"m{m}", "question_id": str(qid), "turn": steps,
                             "conversation": conv, "model_emb": llm_emb[m].round(5).tolist()})
            split = str(rng.choice(["training", "valid", "test"], p=[0.7, 0.1, 0.2]))
            out[split].extend(rows)
            qid += 1
    return out


def write_records(directory: Path, splits: dict[str, list[dict]]) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, rows in splits.items():
        p = directory / f"{split}_set.jsonl"
        with open(p, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        paths[split] = p
    return paths


@pytest.fixture(scope="session")
def planted_paths(tmp_path_factory) -> dict[str, Path]:
    return write_records(tmp_path_factory.mktemp("planted"), planted_records())


@pytest.fixture(scope="session")
def planted_graph(planted_paths):
    from gmt_model.data.graph_files import build_graph

    return build_graph(planted_paths)


def quick_config(**kw):
    from gmt_model.method.config import TrainConfig

    base = dict(epochs=120, eval_every=10, save_every=40, hidden_dim=64, predictor_dim=64, seed=3, lr=2e-3)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="session")
def planted_models(planted_graph, tmp_path_factory):
    """(personalized TrainResult, None) trained once on the planted data."""
    from gmt_model.method.training import train

    out = tmp_path_factory.mktemp("planted_runs")
    pers = train(planted_graph, quick_config(), out / "personalized", resume=False)
    return pers, None


@pytest.fixture(scope="session")
def encoder_cache(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("embedding_cache")
    os.environ["GMTROUTER_CACHE_DIR"] = str(d)
    return d


@pytest.fixture(scope="session")
def demo_paths(tmp_path_factory, encoder_cache) -> dict[str, Path]:
    from gmt_model.data.demo import write_demo_dataset

    return write_demo_dataset(tmp_path_factory.mktemp("demo"), "tiny")


@pytest.fixture(scope="module")
def pg():
    """A throwaway PostgreSQL cluster on 127.0.0.1 for one test module (``tests/pg_cluster.py``); skipped
    where PostgreSQL is not installed (CI installs it)."""
    from pg_cluster import PgCluster, pg_bin

    if pg_bin() is None:
        pytest.skip("PostgreSQL is not installed (CI installs it)")
    with PgCluster() as cluster:
        yield cluster
