"""The preference predictor's scores for the router, computed with the LLMs' share done once.

``PreferencePredictor.forward(user, query, llm)`` projects every candidate LLM's vector and its attention
query once per (user, query) row, although the router scores many rows against the same few LLM vectors.
Each candidate attends over two context tokens (the user and the query), so its attention is one weight per
head between their two values, and the output projection is linear: per row and head the two values are
projected once, and each candidate mixes them.  :class:`Scorer` computes the same scores (up to float
rounding) with the LLMs' part per LLM, the context's per row, and the projections folded into the
predictor's input maps (float64, once).  ``tests/test_scorer.py`` checks it against the module.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from gmt_model.method.model import PreferencePredictor

__all__ = ["Scorer"]


class Scorer:
    """``scorer(user (B, h), query (B, h), llm (L, h), idx (B, M) | None) -> (B, M)`` equals
    ``predictor(user, query, llm[idx])`` (``idx`` None: every row against all L LLMs)."""

    def __init__(self, predictor: PreferencePredictor) -> None:
        attn = predictor.attn
        if not (attn._qkv_same_embed_dim and attn.in_proj_bias is not None and attn.bias_k is None
                and not attn.add_zero_attn and attn.batch_first):
            raise ValueError("Scorer: the predictor's attention is not the one PreferencePredictor builds")
        self.personalization = predictor.personalization
        d, heads = attn.embed_dim, attn.num_heads
        self.d, self.heads, self.dh = d, heads, d // heads
        with torch.inference_mode():
            w, b = attn.in_proj_weight.double(), attn.in_proj_bias.double()

            def fold(outer_w, outer_b, lin):  # outer(lin(x)) as one map of x
                return ((outer_w @ lin.weight.double()).float(),
                        (outer_w @ lin.bias.double() + outer_b).float())

            self.user_kv = fold(w[d:], b[d:], predictor.user_proj)  # the user token's key and value
            self.query_kv = fold(w[d:], b[d:], predictor.query_proj)
            self.llm = (predictor.llm_proj.weight, predictor.llm_proj.bias)
            self.llm_q = fold(w[:d], b[:d], predictor.llm_proj)  # the candidates' attention queries
            self.out_w = attn.out_proj.weight.reshape(d, heads, self.dh)  # (out, head, dh)
            self.out_b = attn.out_proj.bias
            head = predictor.head[-1]
            self.head_att, self.head_llm = head.weight[0, :d], head.weight[0, d:]
            self.head_b = head.bias[0]
        self._llm_src: Tensor | None = None  # the LLM vectors of the last call and their part (cached)
        self._llm_part: tuple[Tensor, Tensor, Tensor] | None = None

    def _llms(self, llm: Tensor) -> tuple[Tensor, Tensor]:
        """The candidates' attention queries (L, heads, dh) and their own share of the head (L,), kept for the
        same LLM tensor (the router's LLM representations change only with the pool)."""
        if self._llm_src is not llm or self._llm_part is None:
            lin = nn.functional.linear
            qc = lin(llm, *self.llm_q).reshape(-1, self.heads, self.dh) / math.sqrt(self.dh)
            const = nn.functional.relu(lin(llm, *self.llm)) @ self.head_llm
            self._llm_src, self._llm_part = llm, (qc, const, llm.detach().clone())
        elif not torch.equal(self._llm_part[2], llm):  # changed in place: recompute
            self._llm_src = None
            return self._llms(llm)
        return self._llm_part[0], self._llm_part[1]

    def __call__(self, user: Tensor, query: Tensor, llm: Tensor, idx: Tensor | None = None) -> Tensor:
        b = user.shape[0]
        if not self.personalization:
            user = torch.zeros_like(user)
        lin = nn.functional.linear
        ku, vu = lin(user, *self.user_kv).reshape(b, 2, self.heads, self.dh).unbind(1)
        kq, vq = lin(query, *self.query_kv).reshape(b, 2, self.heads, self.dh).unbind(1)
        qc, const = self._llms(llm)  # (L, heads, dh), (L,): the candidate's own share of the head
        if idx is None:
            gap = torch.einsum("mhd,bhd->bmh", qc, ku - kq)  # user score - query score per candidate, head
            const = const[None]
        else:
            gap = torch.einsum("bmhd,bhd->bmh", qc[idx], ku - kq)
            const = const[idx]
        w = torch.sigmoid(gap)  # the softmax over the two context tokens: the user's weight
        ou = torch.einsum("bhd,ehd->bhe", vu, self.out_w)  # each head's value through the output projection
        oq = torch.einsum("bhd,ehd->bhe", vq, self.out_w)
        out = torch.einsum("bmh,bhe->bme", w, ou - oq) + (oq.sum(1) + self.out_b)[:, None]
        return nn.functional.relu(out) @ self.head_att + const + self.head_b
