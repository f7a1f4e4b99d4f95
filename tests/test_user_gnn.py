"""UserGNN: users' representations computed directly from their rows equal the subgraph path's (the engine's
``build_subgraph(...).embed``, what training and evaluation use), for multi-turn sessions, pairs that follow
the same turn, several users at once, a user without rows, 1 to 3 layers and subsets of the reference
relations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gmt_model.method import schema as S
from gmt_model.method.checkpoint import History
from gmt_model.method.engine import build_subgraph
from gmt_model.method.model import GMTModel, ModelConfig
from gmt_model.serving.user_gnn import UserGNN, applies
from gmt_model.serving.live_history import GrowingHistory


def _model(relations, layers: int, seed: int = 0) -> GMTModel:
    torch.manual_seed(seed)
    m = GMTModel(ModelConfig(embed_dim=12, hidden_dim=16, heads=4, num_gnn_layers=layers, predictor_dim=16,
                             relations=[S.relation_key(r) for r in relations])).eval()
    with torch.no_grad():  # parameters that start at 1 or 0 get values of their own (each term matters)
        for conv in m.gnn.convs:
            for p in list(conv.skip.values()) + list(conv.p_rel.values()):
                p.normal_(0.0, 1.0)
        for norms in m.gnn.norms:
            for ln in norms.values():
                ln.weight.normal_(1.0, 0.3), ln.bias.normal_(0.0, 0.3)
        m.gnn.user_start.normal_(0.0, 1.0), m.gnn.session_start.normal_(0.0, 1.0)
    m.gnn.set_input_stats(torch.randn(50, 12) * 0.3 + 1.0, torch.randn(7, 12) * 2.0 - 0.5)  # inputs centred, scaled
    assert float(m.gnn.query_scale) != 1.0 and float(m.gnn.query_mean.abs().min()) > 0
    return m


def _history(seed: int = 0, users: int = 5, llms: int = 4, texts: int = 9) -> History:
    """Rows of several users: sessions of several turns, pairs (both sides follow the same turn), ratings
    of several values, texts shared between rows and users; user 3 has no rows."""
    rng = np.random.default_rng(seed)
    user, llm, rating, prev, qrow = [], [], [], [], []
    for u in (0, 1, 2, 4):
        for _ in range(3):  # sessions
            last = -1
            for _ in range(int(rng.integers(1, 4))):  # turns
                q = int(rng.integers(texts))
                pair = rng.random() < 0.5
                for side in range(2 if pair else 1):
                    user.append(u), llm.append(int(rng.integers(llms))), prev.append(last), qrow.append(q)
                    rating.append(float(rng.choice([0.0, 0.25, 0.75, 1.0])) if not pair else float(side == 0))
                last = len(user) - 1
    n = len(user)
    perm = rng.permutation(n)  # the rows interleaved (prev re-pointed)
    inv = np.argsort(perm)
    p = np.asarray(prev)[perm]
    p = np.where(p >= 0, inv[np.maximum(p, 0)], -1)
    return History(user=np.asarray(user)[perm], llm=np.asarray(llm)[perm], rating=np.asarray(rating, np.float32)[perm],
                   prev=p, llm_emb=rng.normal(size=(llms, 12)).astype(np.float32), group=np.arange(n),
                   text_emb=rng.normal(size=(texts, 12)).astype(np.float32), query_row=np.asarray(qrow)[perm])


def _subgraph_users(model: GMTModel, h: History, rows: np.ndarray, users: np.ndarray) -> torch.Tensor:
    g = GrowingHistory(h, model.cfg.edge_types, int(h.user.max()) + 1, headroom=0)
    with torch.inference_mode():
        return build_subgraph(g, rows, np.zeros(0, np.int64), torch.device("cpu"), users=users).embed(model)[S.USER][: users.size]


def _direct_users(model: GMTModel, h: History, rows: np.ndarray, users: np.ndarray) -> torch.Tensor:
    rows = np.sort(rows)
    at = np.minimum(np.searchsorted(rows, h.prev[rows]), max(rows.size - 1, 0))
    prev = np.where((h.prev[rows] >= 0) & (rows[at] == h.prev[rows]), at, -1)
    texts, text_of = np.unique(h.query_row[rows], return_inverse=True)
    pos = {int(u): i for i, u in enumerate(users)}
    with torch.inference_mode():
        gnn = UserGNN(model.gnn, model.gnn.project_llm(torch.from_numpy(h.llm_emb)))
        return gnn.reps(np.array([pos[int(u)] for u in h.user[rows]]), h.llm[rows], h.rating[rows], prev,
                        text_of.reshape(-1), h.text_emb[texts], users.size)


REF = S.REFERENCE_RELATIONS
SUBSETS = {
    "reference": REF,
    "no prev": tuple(r for r in REF if r != S.SESSION_PREV_SESSION),
    "no response, no llm": tuple(r for r in REF if r not in (S.RESPONSE_INCLUDED_BY_SESSION,
                                                               S.LLM_RESPONSE_TO_SESSION)),
    "no session -> user": tuple(r for r in REF if r != S.SESSION_OWNED_BY_USER),
    "only session -> user": (S.SESSION_OWNED_BY_USER,),
    "only prev and session -> user": (S.SESSION_PREV_SESSION, S.SESSION_OWNED_BY_USER),
}


@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("subset", list(SUBSETS))
def test_direct_user_reps_equal_the_subgraph_path(layers, subset):
    model = _model(SUBSETS[subset], layers, seed=layers)
    h = _history(seed=layers)
    users = np.array([4, 0, 3, 2, 1])  # any order; user 3 has no rows
    every = np.arange(h.user.size)
    want = _subgraph_users(model, h, every, users)
    got = _direct_users(model, h, every, users)
    if S.SESSION_OWNED_BY_USER in SUBSETS[subset]:  # users differ: the comparison means something
        assert float((want - want.mean(0)).abs().max()) > 1e-2
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
    # a window of the rows (turns whose earlier turn is outside it) and fewer users
    part = every[h.user[every] != 2][::2]
    users = np.unique(h.user[part])
    torch.testing.assert_close(_direct_users(model, h, part, users), _subgraph_users(model, h, part, users),
                               atol=2e-5, rtol=1e-4)
    # first turns only: no turn follows another among the rows (no `prev` edge at all)
    first = every[h.prev[every] < 0]
    users = np.unique(h.user[first])
    torch.testing.assert_close(_direct_users(model, h, first, users), _subgraph_users(model, h, first, users),
                               atol=2e-5, rtol=1e-4)
    # users without rows only
    none = np.zeros(0, np.int64)
    users = np.array([3, 5])
    torch.testing.assert_close(_direct_users(model, h, none, users), _subgraph_users(model, h, none, users),
                               atol=2e-5, rtol=1e-4)


def test_only_reference_relations_are_computed_directly():
    assert applies(_model(REF, 2).gnn)
    full = _model(S.FULL_RELATIONS, 2)
    assert not applies(full.gnn)
    with pytest.raises(ValueError, match="reference relations"):
        UserGNN(full.gnn, torch.zeros(4, 16))
