"""Subgraph assembly and batched scoring shared by training, evaluation and routing.

A *subgraph* holds every user and LLM node plus the interaction nodes
(session, query, response) of the *visible* interactions, with their
ratings and edges.  The interactions being predicted are not in it at all:
only their query representations are needed, and a query node without
incoming edges gets exactly ``HeteroGNN.isolated`` of its projected input,
so they are computed that way (cheaper, and their ratings are never even
loaded).  One extra user node with no edges (index ``num_users``) is the
"empty history" user used for cold start.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from gmt_model.method import schema as S
from gmt_model.method.graph import GraphTables, IndexMap, as_tensor, relation_edges
from gmt_model.method.model import GMTModel

__all__ = ["Subgraph", "build_subgraph", "GroupSteps", "group_steps", "score_groups", "pair_positions",
           "PRED_QUERY", "score_rows", "cold_calibration", "to_device"]

#: key of the predicted interactions' query representations in ``Subgraph.embed``'s output
PRED_QUERY = "predicted_query"


@dataclass
class Subgraph:
    num_users: int  # including the empty-history user
    nodes: np.ndarray  # global interaction index of each local (visible) interaction node
    local: IndexMap  # global -> local (-1 when not a graph node)
    pred_nodes: np.ndarray  # global index of each predicted-only interaction
    pred_local: IndexMap  # global -> row of pred_nodes (-1 when absent)
    #: embeddings of the distinct query texts of the visible and predicted interactions;
    #: each text is projected once however many interactions share it
    text_emb: Tensor
    text_of: Tensor  # visible node -> row of text_emb
    pred_text_of: Tensor  # predicted-only interaction -> row of text_emb
    llm_emb: Tensor
    rating_values: Tensor  # the distinct ratings of the visible interactions
    rating_of: Tensor  # visible node -> row of rating_values
    edges: dict[S.EdgeType, Tensor]
    #: global user -> user node (-1 when absent), when the subgraph holds only some users' nodes
    user_map: np.ndarray | None = None

    def user_nodes(self, users: np.ndarray) -> np.ndarray:
        """The user nodes of global user indices."""
        if self.user_map is None:
            return np.asarray(users, dtype=np.int64)
        out = self.user_map[np.asarray(users, dtype=np.int64)]
        if np.any(out < 0):
            raise ValueError("a scored user has no node in this subgraph")
        return out

    @property
    def query_emb(self) -> Tensor:
        """The visible interactions' query embeddings, one row per node."""
        return self.text_emb[self.text_of]

    @property
    def pred_query_emb(self) -> Tensor:
        """The predicted-only interactions' query embeddings."""
        return self.text_emb[self.pred_text_of]

    @property
    def rating(self) -> Tensor:
        """The visible interactions' ratings, one per node."""
        return self.rating_values[self.rating_of]

    @property
    def cold_user(self) -> int:
        return self.num_users - 1

    def embed(self, model: GMTModel) -> dict[str, Tensor]:
        """User, LLM and query representations (and the predicted queries'), what scoring reads.

        The same as ``model.embed`` for those node types, computed with less work: the last
        layer only runs the relations into user, LLM and query nodes (under the reference
        relations just session -> user), since no score reads a session or response output.
        Session and response outputs are therefore not returned."""
        gnn = model.gnn
        proj = gnn.project_query(self.text_emb)
        # nodes with the same input share one row until a layer gives them their own output
        x, rows = gnn.input_tables(self.num_users, self.text_of.shape[0], proj, self.text_of, self.llm_emb,
                                   self.rating_values, self.rating_of)
        edges = {et: self.edges[et] for et in gnn.edge_types if et in self.edges}
        last = len(gnn.convs) - 1
        for i, (conv, norms) in enumerate(zip(gnn.convs, gnn.norms)):
            if i < last:
                rels, wanted = edges, None
            else:
                rels, wanted = {et: e for et, e in edges.items() if et[2] in _SCORED}, set(_SCORED)
            types = {t for et in rels for t in (et[0], et[2])}
            out = conv({t: v for t, v in x.items() if t in types}, rels, outputs=wanted,
                       rows={t: r for t, r in rows.items() if t in types}) if rels else {}
            new = dict(x)
            for t, v in out.items():
                if v is not None and (i < last or t in _SCORED):
                    new[t] = norms[t](gnn.dropout(v))
                    rows.pop(t, None)  # per node from now on
            x = new
        reps = {t: x[t] if t not in rows else x[t][rows[t]] for t in _SCORED}
        reps[PRED_QUERY] = gnn.isolated(S.QUERY, proj[self.pred_text_of])
        return reps


#: node types whose representations scoring reads
_SCORED = (S.USER, S.LLM, S.QUERY)


def build_subgraph(g: GraphTables, visible: np.ndarray, predict: np.ndarray, device: torch.device,
                   text_emb_t: Tensor | None = None, llm_emb_t: Tensor | None = None,
                   *, users: np.ndarray | None = None) -> Subgraph:
    """``visible``: global interaction indices in the graph; ``predict``:
    interactions to score (their queries only; those also visible are scored
    from their graph node).  ``text_emb_t``/``llm_emb_t``: the graph's
    ``text_emb`` and ``llm_emb`` already on ``device`` (rows are gathered
    there; otherwise only the needed rows are copied).  Nodes that share an
    input share a row: each distinct query text and each distinct rating is
    stored once, with the row of each node.
    ``users``: None keeps every user node at its global index (a user node
    without edges costs one row; the empty-history user is ``num_users``);
    given, the subgraph has only those user nodes, at their position in
    ``users`` (the empty-history user last): what the live router uses, whose
    table (``g``: any interactions table with the columns read here, e.g. the
    router's growing history) has many users and few of them per call."""
    visible = np.asarray(visible, dtype=np.int64)
    predict = np.setdiff1d(np.asarray(predict, dtype=np.int64), visible)
    local, pred_local = IndexMap(visible), IndexMap(predict)  # no arrays the size of the table

    texts, text_of = np.unique(np.concatenate([g.query_row[visible], g.query_row[predict]]), return_inverse=True)
    text_of = text_of.reshape(-1).astype(np.int64)
    # float16 tables (storage only) are read as float32: only the rows of this subgraph are converted
    if text_emb_t is not None:
        text_emb = text_emb_t[to_device(torch.from_numpy(texts), text_emb_t.device)].float()
    else:
        text_emb = to_device(torch.from_numpy(np.ascontiguousarray(g.text_emb[texts], dtype=np.float32)), device)

    values, rating_of = np.unique(np.asarray(g.rating[visible], dtype=np.float32), return_inverse=True)

    num_users = g.num_users + 1
    umap = None
    if users is not None:
        users = np.asarray(users, dtype=np.int64)
        umap = np.full(int(max(g.num_users, users.max(initial=-1) + 1)), -1, dtype=np.int64)
        umap[users] = np.arange(users.size)
        num_users = users.size + 1
    edges: dict[S.EdgeType, Tensor] = {}
    for rel in g.relations:
        src, dst = relation_edges(g, rel, visible, local)
        if umap is not None:
            src = umap[src] if rel[0] == S.USER else src
            dst = umap[dst] if rel[2] == S.USER else dst
        edges[rel] = to_device(torch.from_numpy(np.stack([src, dst])), device)
    llm = llm_emb_t if llm_emb_t is not None else to_device(as_tensor(g.llm_emb), device)
    return Subgraph(user_map=umap, num_users=num_users, nodes=visible, local=local, pred_nodes=predict,
                    pred_local=pred_local, text_emb=text_emb,
                    text_of=to_device(torch.from_numpy(text_of[:visible.size]), device),
                    pred_text_of=to_device(torch.from_numpy(text_of[visible.size:]), device),
                    llm_emb=llm, rating_values=to_device(torch.from_numpy(values), device),
                    rating_of=to_device(torch.from_numpy(rating_of.reshape(-1).astype(np.int64)), device),
                    edges=edges)


def to_device(t: Tensor, device: torch.device) -> Tensor:
    """Host -> device through pinned memory (asynchronous) on CUDA; a no-op on CPU."""
    if device.type != "cuda":
        return t
    return t.pin_memory().to(device, non_blocking=True)


@dataclass
class GroupSteps:
    """Candidates of each (group, step): the unit that is scored in one row."""

    inter: np.ndarray  # int64 (B, K) global interaction index, -1 padding
    user: np.ndarray  # int64 (B,)
    llm: np.ndarray  # int64 (B, K), -1 padding
    rating: np.ndarray  # float32 (B, K), nan padding
    mask: np.ndarray  # bool (B, K)

    @property
    def size(self) -> int:
        return int(self.inter.shape[0])

    def take(self, rows: np.ndarray) -> "GroupSteps":
        return GroupSteps(self.inter[rows], self.user[rows], self.llm[rows], self.rating[rows], self.mask[rows])


def group_steps(g: GraphTables, interactions: np.ndarray) -> GroupSteps:
    """Group the given interactions by (group, step), vectorised."""
    idx = np.asarray(interactions, dtype=np.int64)
    if idx.size == 0:
        z = np.zeros((0, 1), dtype=np.int64)
        return GroupSteps(z, np.zeros(0, np.int64), z, np.zeros((0, 1), np.float32), np.zeros((0, 1), bool))
    key = g.group[idx] * (int(g.step.max()) + 1) + g.step[idx]
    order = np.lexsort((idx, key))
    idx, key = idx[order], key[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    sizes = np.diff(np.r_[starts, idx.size])
    rows = np.repeat(np.arange(starts.size), sizes)
    cols = np.arange(idx.size) - np.repeat(starts, sizes)
    k = int(sizes.max())
    inter = np.full((starts.size, k), -1, dtype=np.int64)
    inter[rows, cols] = idx
    mask = inter >= 0
    safe = np.where(mask, inter, 0)
    llm = np.where(mask, g.llm[safe], -1)
    rating = np.where(mask, g.rating[safe], np.nan).astype(np.float32)
    return GroupSteps(inter=inter, user=g.user[idx[starts]], llm=llm, rating=rating, mask=mask)


def score_groups(model: GMTModel, reps: dict[str, Tensor], sub: Subgraph, gs: GroupSteps,
                 cold: np.ndarray | bool = False) -> Tensor:
    """Scores (B, K) of every candidate of every group-step in one predictor call.

    ``cold``: rows (or all) scored with the empty-history user.
    """
    device = sub.text_emb.device
    user = np.where(cold, sub.cold_user, sub.user_nodes(gs.user))
    u = reps[S.USER][to_device(torch.from_numpy(np.asarray(user, dtype=np.int64)), device)]
    first = gs.inter[:, 0]
    in_graph = sub.local[first]
    if np.any((in_graph < 0) & (sub.pred_local[first] < 0)):
        raise ValueError("query of a scored interaction is neither visible nor predicted in the subgraph")
    table = torch.cat([reps[S.QUERY], reps[PRED_QUERY]])
    q_row = np.where(in_graph >= 0, in_graph, sub.nodes.size + sub.pred_local[first])
    q = table[to_device(torch.from_numpy(q_row), device)]
    llm = to_device(torch.from_numpy(np.where(gs.mask, gs.llm, 0)), device)
    cand = reps[S.LLM][llm]  # (B, K, H)
    return model.score(u, q, cand)


def pair_positions(gs: GroupSteps) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All within-row pairs (row, col_a, col_b) of a GroupSteps, a < b."""
    k = gs.inter.shape[1]
    ia, ib = np.triu_indices(k, 1)
    valid = gs.mask[:, ia] & gs.mask[:, ib]
    rows, which = np.nonzero(valid)
    return rows, ia[which], ib[which]


def score_rows(model: GMTModel, user_vecs: Tensor, query_emb: np.ndarray, llm_reps: Tensor,
               chunk: int = 4096) -> np.ndarray:
    """Logits (n, L) of every LLM for n (user representation, query embedding)
    rows; the queries as isolated nodes (exact under the reference relations)."""
    n = query_emb.shape[0]
    out = np.zeros((n, llm_reps.shape[0]))
    dev = llm_reps.device
    for s0 in range(0, n, chunk):
        q = torch.from_numpy(np.ascontiguousarray(query_emb[s0:s0 + chunk], dtype=np.float32)).to(dev)
        qv = model.gnn.isolated(S.QUERY, model.gnn.project_query(q))
        uv = user_vecs[s0:s0 + chunk] if user_vecs.dim() == 2 else user_vecs.expand(qv.shape[0], -1)
        out[s0:s0 + qv.shape[0]] = model.score(uv, qv, llm_reps.expand(qv.shape[0], -1, -1)).float().cpu().numpy()
    return out


def cold_calibration(model: GMTModel, g: GraphTables, device: torch.device, max_pairs: int = 50_000,
                     batch_users: int | None = None):
    """The cold-start calibration of ``model`` on ``g``: Bradley-Terry strengths
    from the training pairs; on the validation pairs the weights of the
    cold-start GNN and of the crowd, then of the users' history-conditioned
    scores against those calibrated cold-start scores (no validation pairs:
    the crowd's Bradley-Terry for cold start, the GNN alone for users).
    ``batch_users``: the representations come from subgraphs of that many
    users at a time (their training interactions), as in mini-batch training."""
    from gmt_model.method.checkpoint import comparison_keys
    from gmt_model.method.personal import fit_bias, fit_blend, fit_calibration, group_pairs

    def pairs(split: str):
        idx = np.flatnonzero(g.split_mask(split))
        a, b, label = group_pairs(comparison_keys(g, idx), g.rating[idx])
        if a.size > max_pairs:
            keep = np.linspace(0, a.size - 1, max_pairs).astype(np.int64)
            a, b, label = a[keep], b[keep], label[keep]
        return idx[a], idx[b], label

    a, b, label = pairs(S.SPLIT_TRAIN)
    bias = fit_bias(g.llm[a], g.llm[b], label, g.num_llms)
    a, b, label = pairs(S.SPLIT_VALID)
    if a.size == 0:
        return fit_calibration(bias, np.zeros(0), a, b, label)
    train = np.flatnonzero(g.split_mask(S.SPLIT_TRAIN))
    s = np.zeros((a.size, g.num_llms))
    warm = np.zeros((a.size, g.num_llms))
    if batch_users:
        order = np.argsort(g.user[a], kind="stable")
        au = g.user[a][order]
        tr = train[np.argsort(g.user[train], kind="stable")]
        tu = g.user[tr]
        uniq = np.unique(au)
        chunks = [uniq[i:i + batch_users] for i in range(0, uniq.size, batch_users)]
    else:
        chunks = [None]
    with torch.inference_mode():
        for chunk in chunks:
            if chunk is None:
                rows, vis = np.arange(a.size), train
            else:
                lo, hi = np.searchsorted(au, chunk[0], "left"), np.searchsorted(au, chunk[-1], "right")
                rows = order[lo:hi]
                vis = np.sort(tr[np.searchsorted(tu, chunk[0], "left"):np.searchsorted(tu, chunk[-1], "right")])
                vis = vis[np.isin(g.user[vis], chunk)]  # the range may hold users without pairs here
            sub = build_subgraph(g, vis, np.zeros(0, np.int64), device, users=chunk)
            reps = sub.embed(model)
            qa = g.query_vecs(a[rows])
            s[rows] = score_rows(model, reps[S.USER][sub.cold_user], qa, reps[S.LLM])
            nodes = torch.from_numpy(sub.user_nodes(g.user[a[rows]])).to(device)
            warm[rows] = score_rows(model, reps[S.USER][nodes], qa, reps[S.LLM])
    idx = np.arange(a.size)
    la, lb = g.llm[a], g.llm[b]
    calib = fit_calibration(bias, s[idx, la] - s[idx, lb], la, lb, label)
    cold_cal = calib.apply(s[idx, la], la) - calib.apply(s[idx, lb], lb)
    return fit_blend(calib, warm[idx, la] - warm[idx, lb], cold_cal, label)
