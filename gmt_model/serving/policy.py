"""The routing policy: which candidate to route to, given the scores.

* preference: ``p = softmax(s)`` over the candidates is the preference
  probability the router reports (``scores``, ``confidence``);
* exploration: greedy, Thompson sampling (draw the user's residual and the
  crowd strength of added LLMs from their posteriors), or epsilon-greedy;
* cost: the choice maximises ``p - cost_weight * cost / max_cost`` over the
  candidates (``max_cost``: the most expensive candidate's cost); an LLM
  without a known cost counts as the most expensive; ``cost_weight = 0`` is
  the plain preference choice.  ``max_cost`` in a request is a hard limit;
* the result dict and its reasoning text.

numpy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from gmt_model.errors import RoutingError
from gmt_model.method.personal import POLICIES, PersonalConfig, Posterior
from gmt_model.serving.llm_pool import CrowdEstimate

__all__ = ["Policy", "Choice", "softmax"]


def softmax(s: np.ndarray) -> np.ndarray:
    p = np.exp(s - s.max())
    return p / p.sum()


@dataclass
class Choice:
    best: int  # index among the candidates
    greedy: int  # the posterior-mean favourite
    preferred: int  # the policy's choice before cost (== greedy unless exploring)
    costs: np.ndarray  # per candidate (NaN: unknown)
    cost_weight: float
    excluded: tuple[int, ...] = ()  # candidates over the request's max_cost


class Policy:
    def __init__(self, name: str, epsilon: float, personal: PersonalConfig, seed: int | None) -> None:
        if name not in POLICIES:
            raise RoutingError(f"router.policy: expected one of {POLICIES}, got {name!r}")
        self.name = name
        self.epsilon = float(epsilon)
        self.personal = personal
        self.rng = np.random.default_rng(seed)

    def residual(self, r: np.ndarray, n_llms: int, c_idx: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Residual logits of the candidates ``c_idx`` for query features ``z``."""
        return r.reshape(n_llms, -1)[c_idx] @ z

    def sample(self, s: np.ndarray, post: Posterior | None, crowd: CrowdEstimate, n_llms: int, c_idx: np.ndarray,
               z: np.ndarray, zc: np.ndarray | None = None) -> np.ndarray:
        """The scores the policy ranks by before cost: ``s`` (posterior means), or a Thompson draw.
        ``zc``: the crowd term's query features (None: the crowd term has none)."""
        if self.name != "thompson" or post is None:
            return s
        # sample the per-LLM terms of the residual; the topic terms stay at their mean (sampling them too
        # explores on every query's noise and measured more regret)
        mean = post.residual.reshape(n_llms, -1)
        scale = self.personal.thompson_scale
        if self.personal.thompson_decay > 0:
            scale *= math.sqrt(self.personal.thompson_decay / (self.personal.thompson_decay + post.n))
        draw = post.split(post.sample(self.rng, scale))[0].reshape(n_llms, -1)
        draw[:, 1:] = mean[:, 1:]
        if self.personal.optimistic:
            draw[:, 0] = np.maximum(draw[:, 0], mean[:, 0])
        out = s - self.residual(mean, n_llms, c_idx, z) + self.residual(draw, n_llms, c_idx, z)
        if crowd.involves(c_idx):
            # the crowd strength of added LLMs: its posterior starts wide, so a new LLM gets a fair trial
            out = out + crowd.sample(c_idx, self.rng, self.personal.thompson_scale, self.personal.optimistic, zc) \
                - crowd(c_idx, zc)
        return out

    def choose(self, s: np.ndarray, sampled: np.ndarray, costs: np.ndarray, cost_weight: float,
               max_cost: float | None) -> Choice:
        """``s``: posterior-mean scores; ``sampled``: what :meth:`sample` returned; ``costs`` (NaN: unknown)."""
        if max_cost is None and not cost_weight and self.name != "epsilon":  # the common case, kept cheap
            greedy = int(s.argmax())
            return Choice(best=int(sampled.argmax()) if sampled is not s else greedy, greedy=greedy,
                          preferred=int(sampled.argmax()) if sampled is not s else greedy, costs=costs,
                          cost_weight=float(cost_weight))
        allowed = np.ones(s.size, dtype=bool)
        if max_cost is not None:
            allowed = ~np.isnan(costs) & (np.nan_to_num(costs, nan=np.inf) <= max_cost)
            if not allowed.any():
                raise RoutingError(f"field 'max_cost': no candidate costs at most {max_cost} USD per 1M tokens "
                                   f"(costs: {[None if np.isnan(c) else float(c) for c in costs]})")
        greedy = int(np.argmax(np.where(allowed, s, -np.inf)))
        if self.name == "epsilon" and s.size > 1 and self.rng.random() < self.epsilon:
            preferred = int(self.rng.integers(s.size)) if allowed.all() else \
                int(self.rng.choice(np.flatnonzero(allowed)))
            explored = True
        else:
            preferred = int(np.argmax(np.where(allowed, sampled, -np.inf)))
            explored = False
        best = preferred
        if cost_weight > 0 and not explored:
            known = costs[~np.isnan(costs)]
            top = float(known.max()) if known.size else 0.0
            if top > 0:
                rel = np.nan_to_num(costs, nan=top) / top
                best = int(np.argmax(np.where(allowed, softmax(sampled) - cost_weight * rel, -np.inf)))
        return Choice(best=best, greedy=greedy, preferred=preferred, costs=costs, cost_weight=float(cost_weight),
                      excluded=tuple(int(i) for i in np.flatnonzero(~allowed)))

    def result(self, user: str, session_note: str, cands: tuple[str, ...] | list[str], s: np.ndarray, hist: int,
               used_ctx: bool, choice: Choice, post: Posterior | None) -> dict[str, Any]:
        p = softmax(s)
        best, greedy = choice.best, choice.greedy
        explore = choice.preferred != greedy
        others = np.delete(s, best)
        pref = float(np.mean(1.0 / (1.0 + np.exp(-(s[best] - others))))) if others.size else 1.0
        cold = hist == 0 and not used_ctx
        if cold:
            reasoning = (f"Cold start: no rated history for user {user}; {cands[greedy]} is the best "
                         f"non-personalized choice for this query (crowd-calibrated){session_note}.")
        else:
            extra = " and the conversation's earlier turns" if used_ctx else ""
            own = ""
            if post is not None and post.n:
                own = (f"; the user's own votes ({post.n}) weigh in, "
                       f"{'a taste unlike the crowd' if post.p_wide > 0.5 else 'close to the crowd'} "
                       f"(p={post.p_wide:.2f})")
            reasoning = (f"Selected based on user {user}'s learned preferences ({hist} rated interactions){extra}"
                         f"{own} and the query{session_note}: {cands[greedy]} has the highest predicted preference "
                         f"(p={p[greedy]:.2f} among {len(cands)} candidates).")
        if explore:
            reasoning += (f" Exploratory choice ({self.name}): routed to {cands[choice.preferred]} instead of "
                          f"{cands[greedy]} so the user can rate an alternative.")
        if best != choice.preferred:
            c = choice.costs
            reasoning += (f" Cost-aware (cost_weight={choice.cost_weight:g}): routed to the cheaper {cands[best]} "
                          f"({_usd(c[best])} per 1M tokens, p={p[best]:.2f}) over the preferred "
                          f"{cands[choice.preferred]} ({_usd(c[choice.preferred])}, p={p[choice.preferred]:.2f}).")
        if choice.excluded:
            reasoning += f" max_cost left out {', '.join(cands[i] for i in choice.excluded)}."
        cost = choice.costs[best]
        return {
            "model_name": cands[best],
            "confidence": float(p[best]),
            "user_preference": pref,
            "scores": {c: float(x) for c, x in zip(cands, p)},
            "reasoning": reasoning,
            "cold_start": cold,
            "history_size": hist,
            "exploration": explore,
            "policy": self.name,
            "cost": None if np.isnan(cost) else float(cost),
            "cost_weight": choice.cost_weight,
        }


def _usd(c: float) -> str:
    return "unknown cost" if np.isnan(c) else f"${c:g}"
