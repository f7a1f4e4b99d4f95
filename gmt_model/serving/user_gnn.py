"""Users' GNN representations under the reference relations, computed directly.

Under the reference relation set (``query -> session``, ``llm -> session``, ``response -> session``,
``session -> user``, ``session -prev-> session``, or a subset) only session and user nodes receive
messages, every session has one query, one LLM and one response, and query, LLM and response nodes keep
their projected inputs in every layer.  So a user's representation is a small computation over that
user's rows: per layer, each session attends over its query, LLM, response and the sessions that follow
it; each user attends over its sessions.  :meth:`UserGNN.reps` computes exactly what
``build_subgraph(...).embed(model)[USER]`` gives (the same HGT layers, up to float rounding), for the
users only, without building a graph: the edges are known from the rows, and what depends on the model
only is computed once: each relation's key / value maps folded into one matrix per source type (the
query texts' with the input projection too: one matrix product per call for every layer), the LLM
nodes' keys and values (per pool), the first layer's session queries and keys (every session starts
from the same vector) and the first layer's user output (a user with rows attends over identical
sessions).  A few dozen tensor operations replace the general layer's bookkeeping.  The router calls it
for every user whose representation is stale: a newly loaded user, or one whose history grew
(``UserState.rep_size``).
``tests/test_user_gnn.py`` checks it against the subgraph path.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from gmt_model.method import schema as S
from gmt_model.method.model import HeteroGNN

__all__ = ["UserGNN", "applies"]


def applies(gnn: HeteroGNN) -> bool:
    """Whether :class:`UserGNN` computes this model's user representations (its relations are reference ones)."""
    return set(gnn.edge_types) <= set(S.REFERENCE_RELATIONS)


class _Layer:
    """One HGT layer's weights, folded once (float64, then float32): per node type the query map, per
    (source type, relation) one matrix giving the relation's keys and values (the key / value maps and the
    per-head relation transforms in one), per relation the prior over sqrt(d)."""

    def __init__(self, conv: nn.Module, norms: nn.ModuleDict) -> None:
        f, heads = conv.out_channels, conv.heads
        d = f // heads
        self.heads, self.d = heads, d
        self.q: dict[str, tuple[Tensor, Tensor]] = {}
        self.kv: dict[tuple[str, S.EdgeType], tuple[Tensor, Tensor]] = {}  # (2 f, in) weight and bias
        self.prior: dict[S.EdgeType, Tensor] = {}
        n_types = len(conv.edge_types)
        for t, lin in conv.kqv_lin.lins.items():
            self.q[t] = (lin.weight[f:2 * f], lin.bias[f:2 * f])
        for et in conv.edge_types:
            lin = conv.kqv_lin.lins[et[0]]
            w, b = lin.weight.double(), lin.bias.double()
            idx = torch.arange(heads, device=w.device) * n_types + conv.edge_types_map[et]
            parts_w, parts_b = [], []
            for rel_w, lo in ((conv.k_rel.weight[idx].double(), 0), (conv.v_rel.weight[idx].double(), 2 * f)):
                wh = w[lo:lo + f].reshape(heads, d, -1)  # (heads, d, in)
                bh = b[lo:lo + f].reshape(heads, d)
                parts_w.append(torch.einsum("hde,hdi->hei", rel_w, wh).reshape(f, -1))
                parts_b.append(torch.einsum("hde,hd->he", rel_w, bh).reshape(f))
            self.kv[(et[0], et)] = (torch.cat(parts_w).float(), torch.cat(parts_b).float())
            self.prior[et] = conv.p_rel["__".join(et)].reshape(heads) / math.sqrt(d)
        self.out = {t: (lin.weight, lin.bias) for t, lin in conv.out_lin.lins.items()}
        self.skip = {t: conv.skip[t].sigmoid() for t in conv.skip.keys()}
        self.norm = {t: norms[t] for t in norms.keys()}

    def split(self, kv: Tensor) -> tuple[Tensor, Tensor]:
        """(n, 2 f) keys and values -> two (n, heads, d)."""
        k, v = torch.tensor_split(kv, 2, dim=1)
        return k.reshape(-1, self.heads, self.d), v.reshape(-1, self.heads, self.d)

    def keys_values(self, t: str, x: Tensor, rel: S.EdgeType) -> tuple[Tensor, Tensor]:
        """(n, heads, d) keys and values of type-``t`` nodes ``x`` as sources of ``rel``."""
        w, b = self.kv[(t, rel)]
        return self.split(nn.functional.linear(x, w, b))

    def queries(self, t: str, x: Tensor) -> Tensor:
        w, b = self.q[t]
        return nn.functional.linear(x, w, b).reshape(-1, self.heads, self.d)

    def finish(self, t: str, agg: Tensor, x: Tensor) -> Tensor:
        """A node type's layer output from its aggregated messages (n, heads, d) and its input x (n, h)."""
        w, b = self.out[t]
        a = nn.functional.linear(nn.functional.gelu(agg.reshape(agg.shape[0], -1)), w, b)
        if a.shape[-1] == x.shape[-1]:
            s = self.skip[t]
            a = s * a + (1 - s) * x
        return self.norm[t](a)


def _attend(alpha: Tensor, v: Tensor, dst: Tensor, n: int) -> Tensor:
    """HGT's attention: per edge e (-> dst[e]) and head the score ``alpha`` (q . k * prior), softmax over
    the edges of each destination; the destinations' sums of ``v`` weighted by it: (n, heads, d)."""
    heads = alpha.shape[1]
    top = alpha.new_full((n, heads), -math.inf).scatter_reduce(0, dst[:, None].expand(-1, heads), alpha, "amax")
    e = (alpha - top[dst]).exp()
    total = alpha.new_zeros((n, heads)).index_add_(0, dst, e) + 1e-16
    return v.new_zeros((n,) + v.shape[1:]).index_add_(0, dst, v * (e / total[dst])[:, :, None])


def _fold_input(w: Tensor, b: Tensor, in_w: Tensor, in_b: Tensor, mean: Tensor | float, scale: Tensor | float
                ) -> tuple[Tensor, Tensor]:
    """``w @ lin_in((x - mean) / scale) + b`` as one map of x (float64)."""
    w, in_w = w.double(), in_w.double()
    scale = float(scale)
    mean = mean.double() if isinstance(mean, Tensor) else torch.full((in_w.shape[1],), float(mean),
                                                                     dtype=torch.float64, device=in_w.device)
    return w @ in_w / scale, b.double() + w @ (in_b.double() - in_w @ mean / scale)


class UserGNN:
    """User representations of a model whose relations are reference ones (:func:`applies`), from history
    rows.  ``llm_x``: the LLM nodes' projected inputs (``gnn.project_llm`` of the pool's features; call
    :meth:`set_llms` again after a pool change)."""

    def __init__(self, gnn: HeteroGNN, llm_x: Tensor) -> None:
        if not applies(gnn):
            raise ValueError("UserGNN needs a model whose relations are reference relations")
        self.gnn = gnn
        self.rels = set(gnn.edge_types)
        self.session_dst = any(et[2] == S.SESSION for et in self.rels)  # sessions get outputs
        self.owned = S.SESSION_OWNED_BY_USER in self.rels
        with torch.inference_mode():
            self.layers = [_Layer(c, n) for c, n in zip(gnn.convs, gnn.norms)]
            self._fold_inputs()
            self._first_layer_constants()
        self.set_llms(llm_x)

    def _fold_inputs(self) -> None:
        """The query texts' and the ratings' keys and values in every layer but the last (sessions are
        updated there), each one matrix product from the raw input: per layer, ``2 f`` columns."""
        gnn = self.gnn
        qw, qb, rw, rb = [], [], [], []
        self._inner = range(len(self.layers) - 1)
        for i in self._inner:
            layer = self.layers[i]
            for rel, ws, bs, lin, mean, scale in (
                    (S.QUERY_INCLUDED_BY_SESSION, qw, qb, gnn.query_in, gnn.query_mean, gnn.query_scale),
                    (S.RESPONSE_INCLUDED_BY_SESSION, rw, rb, gnn.response_in, 0.0, 1.0)):
                w, b = layer.kv[(rel[0], rel)] if rel in self.rels else (None, None)
                if w is None:
                    w = lin.weight.new_zeros(2 * layer.heads * layer.d, lin.weight.shape[0])
                    b = lin.weight.new_zeros(w.shape[0])
                fw, fb = _fold_input(w, b, lin.weight, lin.bias, mean, scale)
                ws.append(fw), bs.append(fb)
        cat = lambda xs: torch.cat(xs).float() if xs else None  # noqa: E731
        self._query_w, self._query_b = cat(qw), cat(qb)
        self._rating_w, self._rating_b = cat(rw), cat(rb)

    def _first_layer_constants(self) -> None:
        """Every session and user node starts from one vector: the first layer's session queries and the
        keys and values of a session as the source of ``prev`` are one row, and a user with rows attends over
        identical sessions, so its first-layer output is one vector (and a user without rows another)."""
        gnn, layer = self.gnn, self.layers[0]
        xs0, xu0 = gnn.session_start[None], gnn.user_start[None]
        self._q0 = layer.queries(S.SESSION, xs0) if S.SESSION in layer.q else None
        self._prev0 = (layer.keys_values(S.SESSION, xs0, S.SESSION_PREV_SESSION)
                       if S.SESSION_PREV_SESSION in self.rels else None)
        if self.owned:
            zero = layer.queries(S.USER, xu0).new_zeros(1, layer.heads, layer.d)
            _, v = layer.keys_values(S.SESSION, xs0, S.SESSION_OWNED_BY_USER)
            self._user0 = torch.cat([layer.finish(S.USER, zero, xu0), layer.finish(S.USER, v, xu0)])
        else:
            self._user0 = torch.cat([xu0, xu0])

    def set_llms(self, llm_x: Tensor) -> None:
        """The LLM nodes' keys and values in every layer but the last (they keep their inputs)."""
        rel = S.LLM_RESPONSE_TO_SESSION
        with torch.inference_mode():
            self._llm_kv = [self.layers[i].keys_values(S.LLM, llm_x, rel) if rel in self.rels else None
                            for i in self._inner]

    @torch.inference_mode()
    def reps(self, user: np.ndarray, llm: np.ndarray, rating: np.ndarray, prev: np.ndarray, text_of: np.ndarray,
             text_emb: np.ndarray, n_users: int) -> Tensor:
        """(n_users, h) representations.  Per row (session): ``user`` its user's position (0..n_users-1),
        ``llm``, ``rating`` (normalised), ``prev`` the row (position in these rows) of the session it follows
        (-1: none, or not among these rows), ``text_of`` its row of ``text_emb`` (the distinct texts'
        embeddings).  A user without rows gets what a user node without edges gets."""
        dev = self.gnn.user_start.device
        n = int(np.asarray(user).size)
        user = np.asarray(user, np.int64)
        t_user = torch.from_numpy(user).to(dev)
        has_rows = np.zeros(n_users, np.int64)
        has_rows[user] = 1
        xu = self._user0[torch.from_numpy(has_rows).to(dev)]  # after the first layer
        last = len(self.layers) - 1
        if last == 0 or n == 0:
            return xu if last == 0 or not n_users else self._no_rows(xu, last)
        xs = None  # sessions: None while they are all the start vector
        if self.session_dst:
            values, rating_of = np.unique(np.asarray(rating, np.float32), return_inverse=True)
            t_rating_of = torch.from_numpy(rating_of.reshape(-1).astype(np.int64)).to(dev)
            t_text_of = torch.from_numpy(np.asarray(text_of, np.int64)).to(dev)
            t_llm = torch.from_numpy(np.asarray(llm, np.int64)).to(dev)
            q_kv = nn.functional.linear(torch.from_numpy(np.ascontiguousarray(text_emb, np.float32)).to(dev),
                                        self._query_w, self._query_b)
            r_kv = nn.functional.linear(torch.from_numpy(values).to(dev)[:, None], self._rating_w, self._rating_b)
            later = np.flatnonzero(np.asarray(prev) >= 0)
            t_later = torch.from_numpy(later.astype(np.int64)).to(dev)
            t_earlier = torch.from_numpy(np.asarray(prev, np.int64)[later]).to(dev)
            rows = torch.arange(n, device=dev)
        for i in range(last):  # the sessions' outputs of layer i (the users' of layer 0 are known)
            layer = self.layers[i]
            new_xu = self._users(layer, self._sessions(xs, n), xu, t_user, n_users) if i > 0 and self.owned else xu
            if self.session_dst:
                q = self._q0 if xs is None else layer.queries(S.SESSION, xs)
                f2 = 2 * layer.heads * layer.d
                ks, vs, dst = [], [], []
                for rel, kv, at in ((S.QUERY_INCLUDED_BY_SESSION, q_kv, t_text_of),
                                    (S.RESPONSE_INCLUDED_BY_SESSION, r_kv, t_rating_of)):
                    if rel in self.rels:
                        k, v = layer.split(kv[:, i * f2:(i + 1) * f2][at])
                        ks.append((k, layer.prior[rel])), vs.append(v), dst.append(rows)
                if S.LLM_RESPONSE_TO_SESSION in self.rels:
                    k, v = self._llm_kv[i]
                    ks.append((k[t_llm], layer.prior[S.LLM_RESPONSE_TO_SESSION])), vs.append(v[t_llm])
                    dst.append(rows)
                if S.SESSION_PREV_SESSION in self.rels and later.size:
                    if xs is None:
                        k, v = self._prev0
                        k, v = k.expand(later.size, -1, -1), v.expand(later.size, -1, -1)
                    else:
                        k, v = layer.keys_values(S.SESSION, xs[t_later], S.SESSION_PREV_SESSION)
                    ks.append((k, layer.prior[S.SESSION_PREV_SESSION])), vs.append(v), dst.append(t_earlier)
                if ks:
                    t_dst = torch.cat(dst)
                    qd = q.expand(t_dst.shape[0], -1, -1) if xs is None else q[t_dst]
                    alpha = (qd * torch.cat([k for k, _ in ks])).sum(-1) * torch.cat(
                        [p.expand(k.shape[0], -1) for k, p in ks])
                    agg = _attend(alpha, torch.cat(vs), t_dst, n)
                else:  # no edges into the sessions here (only `prev`, and no turn follows another)
                    agg = q.new_zeros(n, layer.heads, layer.d)
                xs = layer.finish(S.SESSION, agg, self._sessions(xs, n))
            xu = new_xu
        if self.owned:
            xu = self._users(self.layers[last], self._sessions(xs, n), xu, t_user, n_users)
        return xu

    def _sessions(self, xs: Tensor | None, n: int) -> Tensor:
        return self.gnn.session_start[None].expand(n, -1) if xs is None else xs

    @staticmethod
    def _users(layer: _Layer, xs: Tensor, xu: Tensor, t_user: Tensor, n_users: int) -> Tensor:
        """The users' layer output: each attends over its sessions."""
        k, v = layer.keys_values(S.SESSION, xs, S.SESSION_OWNED_BY_USER)
        alpha = (layer.queries(S.USER, xu)[t_user] * k).sum(-1) * layer.prior[S.SESSION_OWNED_BY_USER]
        return layer.finish(S.USER, _attend(alpha, v, t_user, n_users), xu)

    def _no_rows(self, xu: Tensor, last: int) -> Tensor:
        """Users none of whom has rows, after every layer (no messages: each layer's empty update)."""
        if not self.owned:
            return xu
        for layer in self.layers[1:last + 1]:
            xu = layer.finish(S.USER, xu.new_zeros(xu.shape[0], layer.heads, layer.d), xu)
        return xu
