"""Deterministic per-user splitting of comparison groups.

The unit of splitting is a *group* (all records sharing ``(question_id, turn,
judge)``), so a group never straddles splits.  Splits are stratified per user:
every user keeps history in training (GMTRouter computes a user's
representation from that user's training interactions), and the same users
appear in all splits wherever their history is long enough.

Rules for a user with ``n`` groups:

* ``n == 1``: the group goes to training;
* ``n == 2``: one to training, one to test (to valid if the test fraction is 0);
* ``n >= 3``: valid and test counts are ``n * fraction``, rounded down or up
  at random with the probability of the fractional part (so the split
  fractions hold over all users, even when most users are small), then
  reduced until at least one group is left for training.

Each user's groups are shuffled by a generator seeded from ``sha256(seed,
user id)`` (never Python's salted ``hash()``), so the result depends only on
the seed, the user id and the order of that user's groups.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence

import numpy as np

from gmt_model.method.schema import SPLIT_TEST, SPLIT_TRAIN, SPLIT_VALID, SPLITS

__all__ = ["DEFAULT_FRACTIONS", "user_rng", "split_groups", "thin_users", "split_summary"]

#: (training, valid, test)
DEFAULT_FRACTIONS: tuple[float, float, float] = (0.7, 0.1, 0.2)


def user_rng(seed: int, user: str) -> np.random.Generator:
    """A generator seeded from ``sha256("<seed>\\x00<user>")`` (stable across processes)."""
    digest = hashlib.sha256(f"{int(seed)}\x00{user}".encode("utf-8")).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    if len(fractions) != 3:
        raise ValueError(f"fractions must be (training, valid, test), got {tuple(fractions)!r}")
    f = tuple(float(x) for x in fractions)
    if any(not math.isfinite(x) or x < 0 for x in f):
        raise ValueError(f"fractions must be finite and >= 0, got {f!r}")
    if f[0] <= 0:
        raise ValueError(f"the training fraction must be > 0, got {f!r}")
    if abs(sum(f) - 1.0) > 1e-6:
        raise ValueError(f"fractions must sum to 1, got {f!r} (sum {sum(f)})")
    return f  # type: ignore[return-value]


def _user_counts(n: int, fv: float, ft: float, rng: np.random.Generator) -> tuple[int, int]:
    """(n_valid, n_test) for a user with n >= 3 groups."""
    ev, et = n * fv, n * ft
    u = rng.random(2)
    nv = math.floor(ev) + int(u[0] < ev - math.floor(ev))
    nt = math.floor(et) + int(u[1] < et - math.floor(et))
    while nv + nt > n - 1:
        # take back from the split that is furthest above its expectation
        if nv > 0 and (nt == 0 or nv - ev >= nt - et):
            nv -= 1
        else:
            nt -= 1
    return nv, nt


def split_groups(
    group_users: Sequence[str],
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
) -> np.ndarray:
    """Assign every group to a split.

    Parameters
    ----------
    group_users:
        the user (judge) of each group, in group order.
    fractions:
        (training, valid, test) fractions; must sum to 1, training > 0.
    seed:
        the seed; the same inputs and seed always give the same splits.

    Returns
    -------
    numpy array of split names (values of ``schema.SPLITS``), one per group.
    """
    ftr, fv, ft = _check_fractions(fractions)
    by_user: dict[str, list[int]] = {}
    for i, user in enumerate(group_users):
        if not isinstance(user, str):
            raise TypeError(f"group_users[{i}] is {type(user).__name__}, expected str")
        by_user.setdefault(user, []).append(i)

    width = max(len(s) for s in SPLITS)
    out = np.full(len(group_users), SPLIT_TRAIN, dtype=f"<U{width}")
    for user, idx in by_user.items():
        n = len(idx)
        if n == 1:
            continue
        rng = user_rng(seed, user)
        order = [idx[j] for j in rng.permutation(n)]
        if n == 2:
            if ft > 0:
                out[order[1]] = SPLIT_TEST
            elif fv > 0:
                out[order[1]] = SPLIT_VALID
            continue
        nv, nt = _user_counts(n, fv, ft, rng)
        for j in order[n - nt - nv : n - nt]:
            out[j] = SPLIT_VALID
        for j in order[n - nt :]:
            out[j] = SPLIT_TEST
    return out


def thin_users(
    group_users: Sequence[str],
    splits: Sequence[str] | np.ndarray,
    min_training_groups: int = 3,
) -> dict[str, int]:
    """Users with fewer than ``min_training_groups`` training groups.

    Returns ``{user: number of training groups}``, sorted by user id.  Such
    users have little history for the model to learn from; report them (or
    evaluate them separately, like cold-start users).
    """
    if len(group_users) != len(splits):
        raise ValueError(f"group_users has {len(group_users)} entries but splits has {len(splits)}")
    counts: dict[str, int] = {}
    for user, split in zip(group_users, splits):
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        counts[user] = counts.get(user, 0) + (split == SPLIT_TRAIN)
    return {u: c for u, c in sorted(counts.items()) if c < min_training_groups}


def split_summary(group_users: Sequence[str], splits: Sequence[str] | np.ndarray) -> Mapping[str, dict[str, int]]:
    """Per split: number of groups and of distinct users."""
    if len(group_users) != len(splits):
        raise ValueError(f"group_users has {len(group_users)} entries but splits has {len(splits)}")
    groups = {s: 0 for s in SPLITS}
    users: dict[str, set[str]] = {s: set() for s in SPLITS}
    for user, split in zip(group_users, splits):
        if split not in groups:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        groups[split] += 1
        users[split].add(user)
    return {s: {"groups": groups[s], "users": len(users[s])} for s in SPLITS}
