"""Training: the reference protocol, batched.

Every epoch (one optimiser step, as in the reference):

1. sample ``record_per_user`` visible comparison pairs per user (all of a
   user's pairs when they have fewer, with a warning), filled up to
   ``record_per_user x num_users``; then ``prediction_count`` predicted pairs
   among the non-tied pairs none of whose interactions are visible;
2. build the subgraph of the visible interactions (predicted ratings are
   never in it);
3. run the HeteroGNN over that subgraph only;
4. score every predicted pair in one predictor call and apply the pairwise
   logistic loss (``ce``: cross-entropy on the unique best of each
   group-step; ``bce``: against the normalised ratings);
5. Adam step.

Mini-batch mode (``batch_users: N``): an epoch walks over the training users
in a random order, ``N`` users per optimiser step; each step samples
``record_per_user`` visible pairs of each of its users, ``prediction_count``
predicted pairs among those users' other non-tied pairs, and runs the GNN over
that batch's subgraph only (user and LLM nodes plus the batch's visible
interactions), so memory is bounded by the batch, not by the dataset.  The
sampling costs O(batch) (the training pairs are indexed by user once).
Validation and the cold-start calibration then run over users in batches of
``N`` too: each batch's users see their own training interactions.
``batch_users: null`` (the default) is the full-batch reference protocol above.

Validation every ``eval_every`` epochs (all training interactions visible,
validation ratings hidden); the best checkpoint by ``objective`` and a
periodic, resumable checkpoint every ``save_every`` epochs.

On CUDA a step never waits for the device: losses stay on the device and are
read in bulk at validation and checkpoint epochs (then ``callback`` hears the
epochs since the last read); host-to-device copies go through pinned memory;
``amp: true`` runs the GNN and the predictor under bfloat16 autocast (CUDA
only; the loss is computed in float32).  On CPU everything is float32 and the
callback hears every epoch as it ends.

Re-running into the same folder resumes: a killed run continues from its
last periodic checkpoint (``on_start`` hears how many epochs were done); a
finished run is not trained again (``TrainResult.already_trained``; nothing
is written); a run with another configuration or data refuses to resume with
:class:`ResumeMismatchError`, which names what changed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from gmt_model.method import schema as S
from gmt_model.method.checkpoint import CheckpointError, History, load_tensors, read_config, save_checkpoint
from gmt_model.method.config import TrainConfig
from gmt_model.method.engine import (
    GroupSteps,
    Subgraph,
    to_device,
    build_subgraph,
    group_steps,
    pair_positions,
    score_groups,
)
from gmt_model.method.graph import GraphTables, as_tensor, pair_labels
from gmt_model.method.pairwise import pair_accuracy, pair_auc
from gmt_model.method.personal import CrowdCalibration, PersonalConfig
from gmt_model.method.model import GMTModel, ModelConfig

__all__ = ["TrainResult", "train", "model_config_for", "resolve_device", "predict_groups", "pair_scores",
           "router_calibration", "fit_history_weight",
           "EpochSampler", "UserBatchSampler", "ResumeMismatchError", "concat_group_steps"]

log = logging.getLogger(__name__)

BEST = "best"
LAST = "last"
TRAIN_STATE = "train_state.safetensors"


def resolve_device(name: str | torch.device | None) -> torch.device:
    """The torch device ``name`` names (None, "" or "auto": cuda when available, else cpu).

    Raises :class:`gmt_model.errors.DeviceError` (a readable one-line error) for a name torch does
    not know, or a CUDA device this machine does not have."""
    from gmt_model.errors import DeviceError

    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise DeviceError(f"device {str(name)!r}: not a device (expected cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {str(name)!r}: CUDA is not available on this machine (use cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"device {str(name)!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu" and not (dev.type == "mps" and torch.backends.mps.is_available()):
        raise DeviceError(f"device {str(name)!r}: not available here (expected cpu, cuda or cuda:N)")
    return dev


def model_config_for(cfg: TrainConfig, g: GraphTables) -> ModelConfig:
    layers = cfg.num_gnn_layers
    if layers is None:
        layers = 2  # measured: on MT-Bench's two-turn data 3 layers scored below 2 (docs/benchmarks.md)
    return ModelConfig(embed_dim=g.dim, hidden_dim=cfg.hidden_dim, num_gnn_layers=layers, heads=cfg.heads,
                       dropout=cfg.dropout, predictor_dim=cfg.predictor_dim, predictor_heads=cfg.predictor_heads,
                       personalization=cfg.personalization,
                       relations=[S.relation_key(r) for r in S.resolve_relations(cfg.relations)])


@dataclass
class TrainResult:
    best_dir: Path
    last_dir: Path
    best_epoch: int
    best_metric: float
    objective: str
    history: list[dict[str, float]]
    device: str
    epochs_run: int
    wall_time_s: float
    resumed_from: int | None = None
    warnings: list[str] = field(default_factory=list)
    model_config: dict[str, Any] = field(default_factory=dict)
    #: the folder already held a finished run of this configuration: nothing was trained or written
    already_trained: bool = False


class ResumeMismatchError(CheckpointError):
    """The run folder holds a periodic checkpoint of another configuration or data.

    ``folder`` is that checkpoint; ``changes`` lists ``"key: old -> new"``.
    """

    def __init__(self, folder: Path, changes: list[str]) -> None:
        self.folder = Path(folder)
        self.changes = list(changes)
        what = "; ".join(self.changes[:6]) + (f"; and {len(self.changes) - 6} more" if len(self.changes) > 6 else "")
        super().__init__(f"{self.folder}: was written by a run with a different configuration or data ({what}); "
                         "train with resume=False to start again from scratch, or into another folder")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.folder, self.changes))


class EpochSampler:
    """Per-epoch visible / predicted pair sampling of the reference protocol."""

    def __init__(self, g: GraphTables, record_per_user: int, prediction_count: int) -> None:
        self.g = g
        self.pairs = np.flatnonzero(g.pair_mask(S.SPLIT_TRAIN))
        if self.pairs.size == 0:
            raise ValueError("the training split has no comparison pairs")
        self.user = g.user[g.pair_a[self.pairs]]
        self.r = record_per_user
        self.k = prediction_count
        counts = np.bincount(self.user, minlength=g.num_users)
        train_users = np.flatnonzero(counts > 0)
        self.num_train_users = int(train_users.size)
        thin = train_users[counts[train_users] < record_per_user]
        self.thin_users = [g.user_ids[i] for i in thin]
        self.nontie = g.pair_label[self.pairs] != 0.5

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(visible interaction indices, predicted pair indices)."""
        g = self.g
        perm = rng.permutation(self.pairs.size)
        order = perm[np.argsort(self.user[perm], kind="stable")]
        users = self.user[order]
        starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
        sizes = np.diff(np.r_[starts, users.size])
        rank = np.arange(users.size) - np.repeat(starts, sizes)
        chosen = order[rank < self.r]
        budget = self.r * self.num_train_users
        if chosen.size < budget:
            rest = order[rank >= self.r]
            # fill up to the budget, but leave at least prediction_count pairs to predict
            room = max(0, min(budget - chosen.size, rest.size - self.k))
            fill = rng.permutation(rest)[:room]
            chosen = np.concatenate([chosen, fill])
        vis_pairs = self.pairs[chosen]
        visible = np.unique(np.concatenate([g.pair_a[vis_pairs], g.pair_b[vis_pairs]]))
        is_vis = np.zeros(g.num_interactions, dtype=bool)
        is_vis[visible] = True
        cand = self.nontie & ~is_vis[g.pair_a[self.pairs]] & ~is_vis[g.pair_b[self.pairs]]
        cand_idx = np.flatnonzero(cand)
        pred = self.pairs[rng.permutation(cand_idx)[: self.k]] if cand_idx.size else self.pairs[:0]
        return visible, pred


class UserBatchSampler:
    """Mini-batch sampling over users: per step a batch of users, their visible
    pairs and the pairs to predict, in O(batch) time (training pairs indexed by
    user once)."""

    def __init__(self, g: GraphTables, record_per_user: int, prediction_count: int, batch_users: int) -> None:
        self.g = g
        pairs = np.flatnonzero(g.pair_mask(S.SPLIT_TRAIN))
        if pairs.size == 0:
            raise ValueError("the training split has no comparison pairs")
        user = g.user[g.pair_a[pairs]]
        order = np.argsort(user, kind="stable")
        self.pairs = pairs[order]
        self.pa, self.pb = g.pair_a[self.pairs], g.pair_b[self.pairs]
        self.counts = np.bincount(user, minlength=g.num_users)
        self.starts = np.r_[0, np.cumsum(self.counts)[:-1]]
        self.users = np.flatnonzero(self.counts > 0)
        self.nontie = g.pair_label[self.pairs] != 0.5
        self.r, self.k, self.b = int(record_per_user), int(prediction_count), int(batch_users)
        self._vis = np.zeros(g.num_interactions, dtype=bool)  # scratch, all False between calls

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.users.size // self.b)

    def epoch(self, rng: np.random.Generator) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The (visible interactions, predicted pairs) of each step of one epoch."""
        users = rng.permutation(self.users)
        for i in range(0, users.size, self.b):
            yield self.sample(rng, users[i:i + self.b])

    def sample(self, rng: np.random.Generator, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sizes = self.counts[users]
        total = int(sizes.sum())
        first = np.cumsum(sizes) - sizes
        within = np.arange(total) - np.repeat(first, sizes)
        pos = np.repeat(self.starts[users], sizes) + within  # positions in self.pairs, grouped by user
        owner = np.repeat(np.arange(users.size), sizes)
        pos = pos[np.lexsort((rng.random(total), owner))]  # random order within each user
        chosen = pos[within < self.r]
        visible = np.unique(np.concatenate([self.pa[chosen], self.pb[chosen]]))
        self._vis[visible] = True
        cand = pos[self.nontie[pos] & ~self._vis[self.pa[pos]] & ~self._vis[self.pb[pos]]]
        self._vis[visible] = False
        pred = self.pairs[rng.permutation(cand)[: self.k]]
        return visible, pred


def concat_group_steps(parts: list[GroupSteps]) -> GroupSteps:
    """One GroupSteps from several (rows padded to the widest)."""
    parts = [p for p in parts if p.size]
    if not parts:
        z = np.zeros((0, 1), dtype=np.int64)
        return GroupSteps(z, np.zeros(0, np.int64), z, np.zeros((0, 1), np.float32), np.zeros((0, 1), bool))
    k = max(p.inter.shape[1] for p in parts)

    def pad(a: np.ndarray, fill) -> np.ndarray:
        return a if a.shape[1] == k else np.concatenate([a, np.full((a.shape[0], k - a.shape[1]), fill, a.dtype)], 1)

    return GroupSteps(inter=np.concatenate([pad(p.inter, -1) for p in parts]),
                      user=np.concatenate([p.user for p in parts]),
                      llm=np.concatenate([pad(p.llm, -1) for p in parts]),
                      rating=np.concatenate([pad(p.rating, np.nan) for p in parts]),
                      mask=np.concatenate([pad(p.mask, False) for p in parts]))


def user_batches(g: GraphTables, interactions: np.ndarray, batch_users: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(users, interactions of those users) for consecutive batches of ``batch_users``
    users, in user order; O(batch) per batch after one sort."""
    idx = np.asarray(interactions, dtype=np.int64)
    idx = idx[np.argsort(g.user[idx], kind="stable")]
    users = g.user[idx]
    uniq = np.unique(users)
    for i in range(0, uniq.size, batch_users):
        chunk = uniq[i:i + batch_users]
        yield chunk, _slice_users(idx, users, chunk)


def _slice_users(sorted_idx: np.ndarray, sorted_user: np.ndarray, chunk: np.ndarray) -> np.ndarray:
    """The entries of ``sorted_idx`` (sorted by ``sorted_user``) whose user is in ``chunk`` (sorted)."""
    lo = np.searchsorted(sorted_user, chunk[0], side="left")
    hi = np.searchsorted(sorted_user, chunk[-1], side="right")
    idx, user = sorted_idx[lo:hi], sorted_user[lo:hi]
    return np.sort(idx[np.isin(user, chunk)])  # the range may hold users that are not in the chunk


def pairs_as_groups(g: GraphTables, pairs: np.ndarray) -> GroupSteps:
    inter = np.stack([g.pair_a[pairs], g.pair_b[pairs]], axis=1)
    return GroupSteps(inter=inter, user=g.user[inter[:, 0]], llm=g.llm[inter],
                      rating=g.rating[inter].astype(np.float32), mask=np.ones_like(inter, dtype=bool))


def pair_scores(gs: GroupSteps, scores: np.ndarray) -> tuple[np.ndarray, ...]:
    """(rows, col_a, col_b, score_a, score_b, label) of every within-group-step pair."""
    rows, ca, cb = pair_positions(gs)
    ra, rb = gs.rating[rows, ca], gs.rating[rows, cb]
    label = pair_labels(ra, rb)
    return rows, ca, cb, scores[rows, ca], scores[rows, cb], label


@torch.no_grad()
def predict_groups(model: GMTModel, g: GraphTables, split: str, device: torch.device, *,
                   visible_mask: np.ndarray | None = None, cold: bool = False,
                   sub: Subgraph | None = None, batch_users: int | None = None,
                   amp: bool = False) -> tuple[GroupSteps, np.ndarray, Subgraph | None]:
    """Score every candidate of every group-step of ``split``.

    The visible history defaults to the whole training split; the ratings of
    ``split`` are never in the graph.  ``cold``: every user's history hidden.
    ``batch_users``: score the users in batches of that many (each batch's
    subgraph holds its users' visible interactions only; memory bounded by the
    batch; no subgraph is returned); None: one subgraph of the whole history.
    """
    model.eval()
    if tuple(g.relations) != tuple(model.cfg.edge_types):
        g = dataclasses.replace(g, relations=model.cfg.edge_types)
    target = np.flatnonzero(g.split_mask(split))
    if visible_mask is None:
        visible_mask = g.split_mask(S.SPLIT_TRAIN)
    visible = np.flatnonzero(visible_mask & ~g.split_mask(split))
    if batch_users and sub is None:
        vis_sorted = visible[np.argsort(g.user[visible], kind="stable")]
        vis_user = g.user[vis_sorted]
        parts_gs, parts_scores = [], []
        for chunk, tgt in user_batches(g, target, int(batch_users)):
            vis = _slice_users(vis_sorted, vis_user, chunk)
            bsub = build_subgraph(g, vis, tgt, device, users=chunk)  # only this batch's user nodes
            with _autocast(device, amp):
                reps = bsub.embed(model)
                gs = group_steps(g, tgt)
                parts_scores.append(score_groups(model, reps, bsub, gs, cold=cold).float())
            parts_gs.append(gs)
        gs = concat_group_steps(parts_gs)
        k = gs.inter.shape[1]
        scores = [F.pad(t, (0, k - t.shape[1])) for t in parts_scores]
        out = torch.cat(scores).cpu().numpy() if scores else np.zeros(gs.inter.shape, np.float32)
        return gs, out, None
    if sub is None:
        sub = build_subgraph(g, visible, target, device)
    reps = sub.embed(model)
    gs = group_steps(g, target)
    scores = score_groups(model, reps, sub, gs, cold=cold).float().cpu().numpy()
    return gs, scores, sub


def _pair_log_loss(sa: np.ndarray, sb: np.ndarray, label: np.ndarray) -> float:
    """Mean pairwise logistic loss of the non-tied pairs (NaN: none)."""
    keep = label != 0.5
    if not keep.any():
        return float("nan")
    y = np.where(label[keep] == 1.0, 1.0, -1.0)
    return float(np.mean(np.logaddexp(0.0, -y * (sa[keep] - sb[keep]))))


def _validate(model: GMTModel, g: GraphTables, device: torch.device, sub: Subgraph | None,
              batch_users: int | None = None, amp: bool = False):
    gs, scores, sub = predict_groups(model, g, S.SPLIT_VALID, device, sub=sub, batch_users=batch_users, amp=amp)
    *_, sa, sb, label = pair_scores(gs, scores)
    return {"val_loss": _pair_log_loss(sa, sb, label), "val_auc": float(pair_auc(sa, sb, label)),
            "val_accuracy": float(pair_accuracy(sa, sb, label))}, sub


def _loss(cfg: TrainConfig, scores: torch.Tensor, gs: GroupSteps, device: torch.device) -> torch.Tensor:
    def dev(a: np.ndarray) -> torch.Tensor:  # pinned, asynchronous on CUDA
        return to_device(torch.from_numpy(np.ascontiguousarray(a)), device)

    if cfg.loss == "pairwise":
        rows, ca, cb = pair_positions(gs)
        ra, rb = gs.rating[rows, ca], gs.rating[rows, cb]
        keep = ra != rb
        rows, ca, cb = rows[keep], ca[keep], cb[keep]
        y = dev(np.where(ra[keep] > rb[keep], 1.0, -1.0).astype(np.float32))
        r = dev(rows)
        s = scores[r, dev(ca)] - scores[r, dev(cb)]
        return F.softplus(-y * s).mean()
    rating = dev(np.nan_to_num(gs.rating, nan=0.0))
    mask = dev(gs.mask)
    # masked means, not boolean indexing: no device -> host sync for the number of selected rows
    w = mask.to(scores.dtype)
    if cfg.loss == "bce":
        per = F.binary_cross_entropy_with_logits(scores, rating, reduction="none")
        return (per * w).sum() / w.sum().clamp_min(1.0)
    # ce: the unique best candidate of each group-step
    masked = torch.where(mask, rating, torch.full_like(rating, -1.0))
    best = masked.max(dim=1, keepdim=True).values
    unique = (((masked == best) & mask).sum(dim=1) == 1).to(scores.dtype)
    per = F.cross_entropy(scores.masked_fill(~mask, float("-inf")), masked.argmax(dim=1), reduction="none")
    return (per * unique).sum() / unique.sum().clamp_min(1.0)


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"opt.{pid}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    return tensors, {"param_groups": sd["param_groups"]}


def _restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, v in tensors.items():
        if not name.startswith("opt."):
            continue
        _, pid, k = name.split(".", 2)
        state.setdefault(int(pid), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": groups})


def _fingerprint(cfg: TrainConfig, mcfg: ModelConfig, g: GraphTables) -> dict[str, Any]:
    keys = ("lr", "prediction_count", "objective", "loss", "seed", "record_per_user", "weight_decay",
            "cold_start_rate", "eval_every", "save_every", "batch_users", "amp")
    return {"train": {k: getattr(cfg, k) for k in keys}, "model": mcfg.to_dict(),
            "data": {"interactions": g.num_interactions, "pairs": int(g.pair_a.size), "users": g.num_users,
                     "llms": g.num_llms}}


def train(g: GraphTables, cfg: TrainConfig, out_dir: str | Path, *, resume: bool = True,
          callback: Callable[[int, dict[str, float]], None] | None = None,
          device: str | None = None, meta: dict[str, Any] | None = None,
          on_start: Callable[[int], None] | None = None) -> TrainResult:
    """Train on ``g``'s training split, validating on its valid split.

    Writes ``out_dir/best`` (best validation ``objective``) and
    ``out_dir/last`` (every ``save_every`` epochs and at the end; holds the
    optimiser and RNG state so a killed run resumes from it).
    ``callback(epoch, metrics)`` is called after every epoch.  On CPU the run
    is bit-for-bit deterministic for a seed (deterministic scatter kernels).

    ``resume``: continue from ``out_dir/last`` when it exists (a killed run
    resumes where it was saved, exactly; ``on_start(epochs_done)`` is called
    once before the first epoch, with 0 for a fresh start).  When that
    checkpoint already reached ``cfg.epochs`` nothing is trained or written
    and the result has ``already_trained=True``.  A checkpoint of another
    configuration or data raises :class:`ResumeMismatchError`.
    ``resume=False`` starts from scratch (an earlier ``last`` is removed first,
    so a kill cannot leave a mix of two runs to resume from).
    ``meta`` is added to every checkpoint's ``config.json`` ``meta`` (e.g. the pipeline's
    ``feedback_through_id``).
    """
    dev = resolve_device(device or cfg.device)
    import torch.utils.deterministic as det

    was, was_warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    was_fill = det.fill_uninitialized_memory
    if dev.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
        det.fill_uninitialized_memory = False  # NaN-filling every new tensor would double the step time
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have a deterministic implementation.*")
            return _train(g, cfg, Path(out_dir), resume, callback, dev, dict(meta or {}), on_start)
    finally:
        torch.use_deterministic_algorithms(was, warn_only=was_warn)
        det.fill_uninitialized_memory = was_fill


def _train(g: GraphTables, cfg: TrainConfig, out: Path, resume: bool,
           callback: Callable[[int, dict[str, float]], None] | None, dev: torch.device,
           extra_meta: dict[str, Any] | None = None,
           on_start: Callable[[int], None] | None = None) -> TrainResult:
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    mcfg = model_config_for(cfg, g)
    g = dataclasses.replace(g, relations=mcfg.edge_types)  # a view with the model's relations; arrays shared
    model = GMTModel(mcfg)
    _set_input_stats(model, g)
    model = model.to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sampler = EpochSampler(g, cfg.record_per_user, cfg.prediction_count)
    batcher = (UserBatchSampler(g, cfg.record_per_user, cfg.prediction_count, cfg.batch_users)
               if cfg.batch_users else None)
    amp = bool(cfg.amp) and dev.type == "cuda"
    notes: list[str] = []
    if sampler.thin_users:
        msg = (f"{len(sampler.thin_users)} user(s) have fewer than record_per_user={cfg.record_per_user} training "
               f"pairs; all of their pairs are visible every epoch: {sampler.thin_users[:10]}")
        warnings.warn(msg, stacklevel=4)
        notes.append(msg)
    has_valid = bool(g.pair_mask(S.SPLIT_VALID).any())
    if not has_valid:
        notes.append("no validation pairs: the best checkpoint is the last one")
    history_tables = History.from_graph(g, g.split_mask(S.SPLIT_TRAIN))
    fingerprint = _fingerprint(cfg, mcfg, g)
    ckpt_kw = dict(users=g.user_ids, llms=g.llm_names, history=history_tables, encoder=g.encoder,
                   rating_scale=(g.rating_min, g.rating_max))
    higher = True
    metric_key = "val_auc" if cfg.objective == "auc" else "val_accuracy"
    best_metric, best_epoch = -math.inf, 0
    history: list[dict[str, float]] = []
    start_epoch = 1
    resumed_from = None
    last_dir, best_dir = out / LAST, out / BEST
    if resume and (last_dir / TRAIN_STATE).exists():
        start_epoch, best_metric, best_epoch, history = _resume(last_dir, model, opt, rng, fingerprint, dev)
        resumed_from = start_epoch - 1
        if resumed_from >= cfg.epochs and best_dir.exists():
            log.info("%s: already trained (%d epochs); nothing to do", out, resumed_from)
            return TrainResult(best_dir=best_dir, last_dir=last_dir, best_epoch=best_epoch,
                               best_metric=best_metric if best_metric != -math.inf else float("nan"),
                               objective=cfg.objective, history=history, device=str(dev), epochs_run=0,
                               wall_time_s=time.perf_counter() - t0, resumed_from=resumed_from, warnings=notes,
                               model_config=mcfg.to_dict(), already_trained=True)
        log.info("resuming from epoch %d (%s)", resumed_from, last_dir)
    elif not resume and last_dir.exists():
        shutil.rmtree(last_dir)  # a fresh run: never resume into a mix of this run and an older one
    if on_start is not None:
        on_start(start_epoch - 1)
    qe = _device_table(g.text_emb, dev)
    le = _device_table(g.llm_emb, dev)
    val_sub: Subgraph | None = None
    epoch = start_epoch - 1
    pending: list[tuple[int, dict[str, float], torch.Tensor]] = []

    def flush() -> None:
        """Read the pending epochs' losses in one transfer, then tell the callback."""
        if not pending:
            return
        values = torch.stack([t for _, _, t in pending]).float().cpu().tolist()
        for (ep, row, _), v in zip(pending, values):
            row["train_loss"] = float(v)
            if callback is not None:
                callback(ep, row)
        pending.clear()

    def step(visible: np.ndarray, pred: np.ndarray) -> torch.Tensor:
        if cfg.loss == "pairwise":
            gs = pairs_as_groups(g, pred)
        else:
            gs = group_steps(g, np.unique(np.concatenate([g.pair_a[pred], g.pair_b[pred]])))
        # mini-batch: only the batch's user nodes (a user node without edges only costs work)
        users = np.unique(np.concatenate([g.user[visible], gs.user])) if batcher is not None else None
        sub = build_subgraph(g, visible, gs.inter[gs.mask], dev, qe, le, users=users)
        cold = rng.random(gs.size) < cfg.cold_start_rate if cfg.cold_start_rate > 0 else False
        with _autocast(dev, amp):
            reps = sub.embed(model)
            scores = score_groups(model, reps, sub, gs, cold=cold)
        loss = _loss(cfg, scores.float(), gs, dev)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    def save_last(ep: int) -> None:
        tensors, groups = _optimizer_tensors(opt)
        tensors["torch_rng"] = torch.get_rng_state()
        state = {"epoch": ep, "best_metric": best_metric, "best_epoch": best_epoch, "history": history,
                 "numpy_rng": rng.bit_generator.state, "param_groups": groups["param_groups"],
                 "fingerprint": fingerprint}
        save_checkpoint(last_dir, model, meta={**(extra_meta or {}), "epoch": ep, "kind": "periodic"},
                        extra_files={TRAIN_STATE: tensors},
                        extra_json={"train_state": json.loads(json.dumps(state, default=_json_default))}, **ckpt_kw)

    for epoch in range(start_epoch, cfg.epochs + 1):
        model.train()
        if batcher is None:
            visible, pred = sampler.sample(rng)
            if pred.size == 0:
                raise ValueError("no trainable pairs left to predict after sampling the visible history; "
                                 "lower record_per_user or add data")
            epoch_loss = step(visible, pred)
        else:
            losses = [step(visible, pred) for visible, pred in batcher.epoch(rng) if pred.size]
            if not losses:
                raise ValueError("no trainable pairs left to predict after sampling the visible history; "
                                 "lower record_per_user or add data")
            epoch_loss = torch.stack(losses).mean()
        row: dict[str, float] = {"epoch": float(epoch)}
        pending.append((epoch, row, epoch_loss))
        is_eval = has_valid and (epoch % cfg.eval_every == 0 or epoch == cfg.epochs)
        if is_eval:
            metrics, val_sub = _validate(model, g, dev, val_sub, cfg.batch_users, amp)
            row.update(metrics)
            value = metrics[metric_key]
            if not math.isnan(value) and (value > best_metric if higher else value < best_metric):
                best_metric, best_epoch = value, epoch
                save_checkpoint(best_dir, model, meta={**(extra_meta or {}), "epoch": epoch, metric_key: value,
                                                       "kind": "best"}, **ckpt_kw)
            history.append(row)
        elif epoch % cfg.eval_every == 0:
            history.append(row)
        # the callback hears an epoch with its validation metrics; on CUDA only at validation and
        # checkpoint epochs (validation syncs anyway): the one host read of the losses since the last
        if dev.type != "cuda" or is_eval or epoch % cfg.eval_every == 0 or epoch % cfg.save_every == 0:
            flush()
        if epoch % cfg.save_every == 0 and epoch != cfg.epochs:
            save_last(epoch)
    flush()
    save_last(epoch)
    if not has_valid or best_epoch == 0 or not best_dir.exists():
        save_checkpoint(best_dir, model, meta={**(extra_meta or {}), "epoch": epoch, "kind": "best"}, **ckpt_kw)
        best_epoch = epoch
    _store_cold_calibration(best_dir, g, dev, cfg.batch_users)
    return TrainResult(best_dir=best_dir, last_dir=last_dir, best_epoch=best_epoch,
                       best_metric=best_metric if best_metric != -math.inf else float("nan"),
                       objective=cfg.objective, history=history, device=str(dev),
                       epochs_run=max(0, epoch - start_epoch + 1), wall_time_s=time.perf_counter() - t0,
                       resumed_from=resumed_from, warnings=notes, model_config=mcfg.to_dict())


def _store_cold_calibration(best_dir: Path, g: GraphTables, dev: torch.device,
                            batch_users: int | None = None) -> None:
    """The best model's cold-start calibration (crowd Bradley-Terry + validated weight
    of the cold-start GNN, of the users' history-conditioned scores and of their training rows in
    their residual) into its checkpoint, for the router."""
    from gmt_model.method.checkpoint import load_checkpoint, update_meta

    ck = load_checkpoint(best_dir, device=dev)
    update_meta(best_dir, {"cold_calibration": router_calibration(ck.model, g, dev, batch_users).to_dict()})


def router_calibration(model: GMTModel, g: GraphTables, device: torch.device,
                       batch_users: int | None = None) -> CrowdCalibration:
    """The calibration training stores in the checkpoint and the router uses: ``cold_calibration`` (the
    crowd, the cold-start GNN, the users' history-conditioned scores) and the history weight."""
    from gmt_model.method.engine import cold_calibration

    calib = cold_calibration(model, g, device, batch_users=batch_users)
    calib.history = fit_history_weight(model, g, device, calib, batch_users=batch_users)
    return calib


def fit_history_weight(model: GMTModel, g: GraphTables, device: torch.device, calib: CrowdCalibration,
                       batch_users: int | None = None, max_users: int = 2_000,
                       weights: tuple[float, ...] | None = None, cfg: PersonalConfig | None = None) -> float:
    """The weight of users' training rows in their residual that best predicts the validation pairs
    (pairwise log-likelihood, as routed; at most ``max_users`` users with validation pairs, evenly spaced).
    No validation pairs: 1."""
    from gmt_model.method.online import HISTORY_WEIGHTS, online_scores

    gs, scores, sub = predict_groups(model, g, S.SPLIT_VALID, device, batch_users=batch_users)
    if gs.size == 0:
        return 1.0
    _, cold, _ = predict_groups(model, g, S.SPLIT_VALID, device, cold=True, sub=sub, batch_users=batch_users)
    users = np.unique(gs.user)
    if users.size > max_users:
        users = users[np.linspace(0, users.size - 1, max_users).astype(np.int64)]
        keep = np.flatnonzero(np.isin(gs.user, users))
        gs, scores, cold = gs.take(keep), scores[keep], cold[keep]
    if not (pair_scores(gs, scores)[-1] != 0.5).any():
        return 1.0
    best, best_nll = 1.0, np.inf
    for w in weights or HISTORY_WEIGHTS:
        warm, _, _ = online_scores(model, g, gs, scores, cold, cfg, device, batch_users,
                                   calib=dataclasses.replace(calib, history=float(w)))
        nll = _pair_log_loss(*pair_scores(gs, warm)[3:])
        if nll < best_nll - 1e-9:
            best, best_nll = float(w), nll
    return best


#: up to this many (training interaction x width) cells the input statistics are computed on the rows
_EXACT_STATS_CELLS = 20_000_000


def _set_input_stats(model: GMTModel, g: GraphTables) -> None:
    """The input normalisation from the training interactions' query embeddings
    (each text weighted by its number of training interactions) and the LLM
    embeddings.  Small graphs take the exact per-interaction path (bit-for-bit as
    before deduplication); large ones never materialise the (N, d) matrix."""
    train = np.flatnonzero(g.split_mask(S.SPLIT_TRAIN))
    if train.size * g.dim <= _EXACT_STATS_CELLS:
        model.gnn.set_input_stats(as_tensor(g.query_vecs(train)), as_tensor(g.llm_emb))
        return
    if not model.cfg.normalize_inputs:
        return
    w = np.bincount(g.query_row[train], minlength=g.num_texts).astype(np.float64)
    # two passes over the text table in row chunks (a float64 copy of millions of texts would not fit)
    step = 1 << 16
    chunks = range(0, g.num_texts, step)
    mean = sum(w[i:i + step] @ np.asarray(g.text_emb[i:i + step], dtype=np.float64) for i in chunks) / w.sum()
    var = sum(w[i:i + step] @ ((np.asarray(g.text_emb[i:i + step], dtype=np.float64) - mean) ** 2)
              for i in chunks).sum() / (w.sum() * g.dim)
    gnn = model.gnn
    with torch.no_grad():
        gnn.query_mean.copy_(torch.from_numpy(mean.astype(np.float32)))
        gnn.query_scale.copy_(torch.tensor(max(float(np.sqrt(var)), 1e-6)))
        le = as_tensor(g.llm_emb).float()
        lm = le.mean(dim=0)
        gnn.llm_mean.copy_(lm)
        gnn.llm_scale.copy_((le - lm).pow(2).mean().sqrt().clamp_min(1e-6))


def _device_table(a: np.ndarray, dev: torch.device) -> torch.Tensor:
    """A graph column on ``dev`` (CPU: a zero-copy view; CUDA: one pinned, asynchronous copy)."""
    t = as_tensor(a)
    return t if dev.type != "cuda" else t.pin_memory().to(dev, non_blocking=True)


def _autocast(dev: torch.device, enabled: bool):
    """bfloat16 autocast on CUDA when enabled; a no-op context otherwise."""
    import contextlib

    if enabled and dev.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _changes(old: Any, new: Any, prefix: str = "") -> list[str]:
    """``"key: old -> new"`` for every leaf that differs between two fingerprints."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in list(old) + [k for k in new if k not in old]:
            key = f"{prefix}.{k}" if prefix else str(k)
            out += _changes(old.get(k, "<unset>"), new.get(k, "<unset>"), key)
        return out
    return [] if old == new else [f"{prefix}: {old!r} -> {new!r}"]


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def _resume(last_dir: Path, model: GMTModel, opt: torch.optim.Optimizer, rng: np.random.Generator,
            fingerprint: dict[str, Any], dev: torch.device) -> tuple[int, float, int, list[dict[str, float]]]:
    cfg = read_config(last_dir)
    state = cfg.get("extra", {}).get("train_state")
    if not state:
        raise CheckpointError(f"{last_dir}: no training state to resume from")
    now = json.loads(json.dumps(fingerprint, default=_json_default))
    if now != state["fingerprint"]:
        raise ResumeMismatchError(last_dir, _changes(state["fingerprint"], now))
    weights = load_tensors(last_dir, cfg, "model.safetensors")
    model.load_state_dict(weights)
    model.to(dev)
    tensors = load_tensors(last_dir, cfg, TRAIN_STATE)
    torch.set_rng_state(tensors.pop("torch_rng"))
    _restore_optimizer(opt, {k: v.to(dev) if k.split(".")[-1] != "step" else v for k, v in tensors.items()},
                       state["param_groups"])
    rng.bit_generator.state = state["numpy_rng"]
    return int(state["epoch"]) + 1, float(state["best_metric"]), int(state["best_epoch"]), list(state["history"])
