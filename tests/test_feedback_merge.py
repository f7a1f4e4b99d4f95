"""The retraining merge keeps pairwise preferences (issue 14: no merge test used pairwise rows).

A pairwise preference (``/v1/feedback {preferred, rejected}``, ``gmtrouter feedback --preferred A
--rejected B``, ``GMTRouter.update_user_preference``) is stored as two log rows sharing a
``query_id`` (``pref:<uuid>``): the preferred LLM at the top of the rating scale, the rejected one at
the bottom.  The merge (``assets.data_steps._feedback`` -> ``assets.feedback_merge.feedback_groups``)
must turn them into one training comparison group with that order.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from assets.data_steps import _feedback
from gmt_model.serving.feedback import FeedbackLog

LLMS = ["alpha", "beta", "gamma"]
SCALE = (1.0, 5.0)


def _pair(user: str, query: str, preferred: str, rejected: str, turn: int | None = None) -> list[dict]:
    """The two rows GMTRouter.update_user_preference appends."""
    key = f"pref:{uuid.uuid4().hex}"
    lo, hi = SCALE
    return [dict(user_id=user, query=query, model=preferred, rating=hi, session_id="s1", turn=turn, query_id=key),
            dict(user_id=user, query=query, model=rejected, rating=lo, session_id="s1", turn=turn, query_id=key)]


def test_pairwise_rows_become_training_groups(tmp_path: Path) -> None:
    log = tmp_path / "feedback.sqlite"
    with FeedbackLog(log) as fb:
        fb.append_many(_pair("u1", "write a haiku", "beta", "alpha", turn=2))
        fb.append(user_id="u1", query="something else", model="alpha", rating=4.0)  # a lone rating: history only
        fb.append_many(_pair("new_user", "explain monads", "gamma", "beta"))
    groups, st = _feedback(log, LLMS, SCALE, known_users={"u1"})
    got = sorted(sorted((r["judge"], r["model"], r["turn"], r["conversation"][0]["query"],
                         r["conversation"][0]["rating"]) for r in g) for g in groups)
    assert got == sorted([
        sorted([("u1", "beta", 2, "write a haiku", 5.0), ("u1", "alpha", 2, "write a haiku", 1.0)]),
        sorted([("new_user", "gamma", 1, "explain monads", 5.0), ("new_user", "beta", 1, "explain monads", 1.0)]),
    ])
    assert st.rows_read == 5 and st.rows_merged == 4 and st.rows_history_only == 1 and st.groups_added == 2
    assert st.unmerged_ids == [3] and st.users_added == ["new_user"] and st.max_id == 5
