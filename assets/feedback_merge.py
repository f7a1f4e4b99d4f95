"""Merging router feedback into a dataset's training split.

The router appends every rating it receives to a durable feedback log
(``gmt_model.serving.feedback.FeedbackLog``: ``user_id, query, model, rating``, ...).
A rating becomes training data only where it forms a *comparison*: the same
user rated two or more different LLMs on the same query text.  Such a set
becomes one GMTRouter group (one single-step record per rated LLM; the last
rating of an LLM wins when it was rated twice).  Everything else stays
"history only" (in the log and in the live router, not in the training
data), because a group of one record compares nothing.

Ratings are on the checkpoint's raw scale (the router refuses others); a
rating outside the training split's rating range, or for an LLM the dataset
does not know, is not merged either.  Counts of each outcome are returned.

No Dagster or MLflow here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from gmt_model.serving.feedback import FeedbackRecord
from gmt_model.method.schema import (
    F_CONVERSATION,
    F_JUDGE,
    F_MODEL,
    F_QUERY,
    F_QUESTION_ID,
    F_RATING,
    F_RESPONSE,
    F_TURN,
)

__all__ = ["FEEDBACK_QID_PREFIX", "FeedbackMergeStats", "feedback_groups", "pool_descriptions"]

#: question ids of merged feedback groups start with this
FEEDBACK_QID_PREFIX = "feedback:"


@dataclass
class FeedbackMergeStats:
    """What the feedback merge (``assets.data_steps.materialize_interactions``) did with the feedback log."""

    log_path: str | None = None
    log_exists: bool = False
    max_id: int = 0  # the largest id read: every row up to it was considered (``feedback_through_id``)
    rows_read: int = 0
    rows_merged: int = 0  # rows that became records of comparison groups
    rows_history_only: int = 0  # no second LLM rated by the same user on the same query
    rows_superseded: int = 0  # an LLM rated again on the same (user, query): the last rating counts
    rows_unknown_model: int = 0  # LLM not in the dataset
    rows_out_of_scale: int = 0  # rating outside the training split's rating range
    groups_added: int = 0
    users_added: list[str] = field(default_factory=list)  # feedback users new to the dataset
    #: ids of rows read but not in the training data (history only, unknown LLM, out of scale); not in to_dict
    unmerged_ids: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (without the id list)."""
        out = asdict(self)
        out.pop("unmerged_ids")
        return out


def pool_descriptions(events: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """LLMs the live router's pool gained or re-described (``FeedbackLog.read_llm_events``, in id order):
    name -> its last description.  The next training run knows these LLMs (their feedback merges like
    any other) and embeds each one's description as its node features, as the router did.  A removed
    LLM stays (its history is training data; the router keeps it out of the pool by replaying the events)."""
    out: dict[str, str] = {}
    for ev in events:
        d = ev.get("description")
        if ev.get("op") in ("add", "update") and isinstance(d, str) and d.strip():
            out[str(ev["name"])] = d
    return out


def _qid(query: str) -> str:
    return FEEDBACK_QID_PREFIX + hashlib.sha256(query.encode("utf-8")).hexdigest()[:16]


def feedback_groups(
    rows: Iterable[FeedbackRecord],
    *,
    models: Sequence[str],
    rating_range: tuple[float, float],
    stats: FeedbackMergeStats | None = None,
) -> list[list[dict[str, Any]]]:
    """Comparison groups (un-embedded record dicts) formed by feedback ``rows``.

    Rows are grouped by (user, query text); within a group the last rating
    of each LLM counts; groups with two or more LLMs are returned, in order
    of their first row id, their records sorted by model name.
    """
    st = stats if stats is not None else FeedbackMergeStats()
    known = set(models)
    lo, hi = rating_range
    by_key: dict[tuple[str, str], dict[str, FeedbackRecord]] = {}
    first_id: dict[tuple[str, str], int] = {}
    for r in rows:
        st.rows_read += 1
        if r.model not in known:
            st.rows_unknown_model += 1
            st.unmerged_ids.append(int(r.id))
            continue
        if not lo <= r.rating <= hi:
            st.rows_out_of_scale += 1
            st.unmerged_ids.append(int(r.id))
            continue
        key = (r.user_id, r.query.strip())
        slot = by_key.setdefault(key, {})
        first_id.setdefault(key, r.id)
        if r.model in slot:
            st.rows_superseded += 1
        slot[r.model] = r  # ids ascend: the last rating wins
    groups: list[list[dict[str, Any]]] = []
    for key in sorted(by_key, key=lambda k: first_id[k]):
        slot = by_key[key]
        if len(slot) < 2:
            st.rows_history_only += len(slot)
            st.unmerged_ids.extend(int(r.id) for r in slot.values())
            continue
        user, query = key
        turns = {r.turn for r in slot.values()}
        turn = turns.pop() if len(turns) == 1 and None not in turns else 1
        group = [
            {F_JUDGE: user, F_MODEL: m, F_QUESTION_ID: _qid(query), F_TURN: int(turn),
             F_CONVERSATION: [{F_QUERY: query, F_RESPONSE: None, F_RATING: float(slot[m].rating)}]}
            for m in sorted(slot)
        ]
        st.rows_merged += len(group)
        groups.append(group)
    st.groups_added = len(groups)
    st.unmerged_ids.sort()
    return groups
