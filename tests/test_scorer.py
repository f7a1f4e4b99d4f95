"""Scorer: the router's predictor scores (the LLMs' share computed once per LLM) equal the module's."""

from __future__ import annotations

import pytest
import torch

from gmt_model.method.model import GMTModel, ModelConfig
from gmt_model.serving.scorer import Scorer


@pytest.mark.parametrize("personalization", [True, False])
def test_scorer_equals_the_predictor(personalization):
    torch.manual_seed(1)
    m = GMTModel(ModelConfig(embed_dim=12, hidden_dim=16, heads=4, predictor_dim=32, predictor_heads=4,
                             personalization=personalization)).eval()
    with torch.no_grad():
        for p in m.predictor.parameters():
            p.normal_(0.0, 0.5)  # biases and all: every term matters
    user, query, llm = torch.randn(9, 16), torch.randn(9, 16), torch.randn(5, 16)
    idx = torch.randint(0, 5, (9, 3))
    s = Scorer(m.predictor)
    with torch.inference_mode():
        want_all = m.score(user, query, llm.expand(9, -1, -1))
        want_idx = m.score(user, query, llm[idx])
        assert float(want_all.std()) > 0.1
        torch.testing.assert_close(s(user, query, llm), want_all, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(s(user, query, llm, idx), want_idx, atol=1e-5, rtol=1e-4)
        other = m.score(user.roll(1, 0), query, llm.expand(9, -1, -1))  # the user matters (or not)
        assert (float((other - want_all).abs().max()) > 1e-3) == personalization


def test_the_llms_part_follows_the_llm_vectors():
    """The LLMs' part is kept between calls for the same tensor only: other LLM vectors (a pool change: an
    LLM added or re-described) or the same tensor changed in place are scored with their own values."""
    torch.manual_seed(2)
    m = GMTModel(ModelConfig(embed_dim=12, hidden_dim=16, heads=4, predictor_dim=32, predictor_heads=4)).eval()
    s = Scorer(m.predictor)
    user, query = torch.randn(4, 16), torch.randn(4, 16)
    with torch.inference_mode():
        a = torch.randn(5, 16)
        torch.testing.assert_close(s(user, query, a), m.score(user, query, a.expand(4, -1, -1)), atol=1e-5, rtol=1e-4)
        b = torch.randn(6, 16)  # an LLM more
        torch.testing.assert_close(s(user, query, b), m.score(user, query, b.expand(4, -1, -1)), atol=1e-5, rtol=1e-4)
        c = b.clone()
        s(user, query, c)
        c[2] += 1.0  # changed in place
        torch.testing.assert_close(s(user, query, c), m.score(user, query, c.expand(4, -1, -1)), atol=1e-5, rtol=1e-4)
