"""Seed-style YAML configuration -> typed dataclasses.

``configs/model_config_train/gmtrouter.yaml`` (training) and
``configs/model_config_test/gmtrouter.yaml`` (routing) are accepted with
the keys of the seed document; the extra keys this project adds are all
optional and documented in ``configs/``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from gmt_model.method import schema as S

__all__ = ["TrainConfig", "RouterConfig", "ConfigError", "load_train_config", "load_router_config",
           "checkpoint_dir_from_model_path"]


class ConfigError(ValueError):
    """A configuration file has a missing, unknown or ill-typed key."""


@dataclass
class TrainConfig:
    # dataset
    dataset_name: str = "demo"
    dataset_path: str = "./data"
    # train
    epochs: int = 350
    lr: float = 5e-4
    prediction_count: int = 256
    objective: str = "auc"  # auc | accuracy
    binary: bool = True  # pairwise preference loss
    loss: str | None = None  # pairwise | ce | bce; None: pairwise when binary else ce
    eval_every: int = 5
    seed: int = 136
    record_per_user: int = 10
    weight_decay: float = 0.0
    cold_start_rate: float = 0.1  # share of predicted pairs scored with the user's history hidden
    device: str | None = None  # None: cuda when available else cpu
    #: mini-batch training over users: this many users per optimiser step (their visible pairs, their
    #: predicted pairs); validation and calibration also run in user batches. None: full batch (reference)
    batch_users: int | None = None
    amp: bool = False  # bfloat16 autocast for the GNN and predictor (CUDA only; ignored on CPU)
    # gmt_config
    num_gnn_layers: int | None = None  # None: 2 (multi-turn too: 3 measured worse on MT-Bench)
    hidden_dim: int = 128
    dropout: float = 0.1
    personalization: bool = True
    heads: int = 4
    predictor_dim: int = 256
    predictor_heads: int = 4
    relations: Any = "reference"
    # checkpoint
    checkpoint_root: str = "./models"
    save_every: int = 25
    # paths
    training_set: str | None = None
    valid_set: str | None = None
    test_set: str | None = None
    save_model_path: str | None = None
    load_model_path: str | None = None
    source: str | None = None  # file the config came from

    def __post_init__(self) -> None:
        if self.objective not in ("auc", "accuracy"):
            raise ConfigError(f"{self.source or 'config'}: train.objective: expected 'auc' or 'accuracy', got {self.objective!r}")
        if self.loss is None:
            self.loss = "pairwise" if self.binary else "ce"
        if self.loss not in ("pairwise", "ce", "bce"):
            raise ConfigError(f"{self.source or 'config'}: train.loss: expected pairwise, ce or bce, got {self.loss!r}")
        for name in ("epochs", "prediction_count", "eval_every", "save_every", "record_per_user", "hidden_dim"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{self.source or 'config'}: {name}: expected a positive integer, got {getattr(self, name)!r}")
        if self.batch_users is not None and int(self.batch_users) < 1:
            raise ConfigError(f"{self.source or 'config'}: train.batch_users: expected a positive integer or null, "
                              f"got {self.batch_users!r}")
        if not 0.0 <= self.cold_start_rate < 1.0:
            raise ConfigError(f"{self.source or 'config'}: train.cold_start_rate: expected [0, 1)")
        S.resolve_relations(self.relations)

    def split_paths(self) -> dict[str, str]:
        """JSONL paths per split: ``data_path`` keys, else ``<path>/<name>/<split file>``."""
        out: dict[str, str] = {}
        explicit = {S.SPLIT_TRAIN: self.training_set, S.SPLIT_VALID: self.valid_set, S.SPLIT_TEST: self.test_set}
        for split, p in explicit.items():
            out[split] = p if p else str(Path(self.dataset_path) / self.dataset_name / S.SPLIT_FILES[split])
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def model_dir(self) -> Path:
        if self.save_model_path:
            return checkpoint_dir_from_model_path(self.save_model_path)
        return Path(self.checkpoint_root) / self.dataset_name / "best"


def checkpoint_dir_from_model_path(p: str | Path) -> Path:
    """The seed names a file (``.../gmtrouter.pt``); our checkpoint is a folder.

    ``saved_models/gmtrouter/gmtrouter.pt`` -> ``saved_models/gmtrouter/gmtrouter``.
    """
    p = Path(p)
    return p.with_suffix("") if p.suffix else p


_SECTIONS = {
    "dataset": {"name": "dataset_name", "path": "dataset_path"},
    "train": {f: f for f in ("epochs", "lr", "prediction_count", "objective", "binary", "loss", "eval_every",
                             "seed", "record_per_user", "weight_decay", "cold_start_rate", "device",
                             "batch_users", "amp")},
    "gmt_config": {f: f for f in ("num_gnn_layers", "hidden_dim", "dropout", "personalization", "heads",
                                  "predictor_dim", "predictor_heads", "relations")},
    "checkpoint": {"root": "checkpoint_root", "save_every": "save_every"},
    "data_path": {"training_set": "training_set", "valid_set": "valid_set", "test_set": "test_set"},
    "model_path": {"save_model_path": "save_model_path", "load_model_path": "load_model_path"},
}


def _coerce(value: Any, target_type: Any, where: str) -> Any:
    t = str(target_type)
    if value is None:
        return None
    try:
        if t.startswith("int"):
            if isinstance(value, bool):
                raise TypeError
            return int(value)
        if t.startswith("float"):
            return float(value)  # YAML reads 5e-4 as a string
        if t.startswith("bool"):
            if isinstance(value, bool):
                return value
            raise TypeError
        if t.startswith("str"):
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected {t}, got {value!r}") from None
    return value


def _resolve(base: Path, p: str | None) -> str | None:
    if p is None:
        return None
    q = Path(p).expanduser()
    return str(q if q.is_absolute() else (base / q))


def _resolve_store(base: Path, p: str | None) -> str | None:
    """A feedback store: a ``postgresql://`` URL as it is, else a SQLite path (relative to ``base``)."""
    if isinstance(p, str) and p.strip().lower().startswith(("postgresql://", "postgres://")):
        return p.strip()
    return _resolve(base, p)


def load_train_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                      *, relative_to: str | Path | None = None) -> TrainConfig:
    """Read a seed-style training YAML.

    Relative paths resolve against ``relative_to`` (default: the current
    directory, as in the seed's ``./data`` examples).  ``overrides`` are
    flat field names of :class:`TrainConfig` applied last.
    """
    raw: dict[str, Any] = {}
    src = None
    if path is not None:
        src = str(path)
        raw = _read_yaml(path)
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
    types = {f.name: f.type for f in fields(TrainConfig)}
    kw: dict[str, Any] = {}
    for section, value in raw.items():
        if section not in _SECTIONS:
            raise ConfigError(f"{src}: unknown section {section!r}; expected one of {sorted(_SECTIONS)}")
        if value is None:
            continue
        if not isinstance(value, dict):
            raise ConfigError(f"{src}: {section}: expected a mapping")
        for key, v in value.items():
            if key not in _SECTIONS[section]:
                raise ConfigError(f"{src}: {section}.{key}: unknown key; expected one of {sorted(_SECTIONS[section])}")
            name = _SECTIONS[section][key]
            kw[name] = v if name == "relations" else _coerce(v, types[name], f"{src}: {section}.{key}")
    for name, v in (overrides or {}).items():
        if name not in types:
            raise ConfigError(f"override {name!r}: unknown field")
        kw[name] = v if name == "relations" else _coerce(v, types[name], f"override {name}")
    base = Path(relative_to) if relative_to is not None else Path.cwd()
    for name in ("dataset_path", "checkpoint_root", "training_set", "valid_set", "test_set",
                 "save_model_path", "load_model_path"):
        if name in kw:
            kw[name] = _resolve(base, kw[name])
    return TrainConfig(source=src, **kw)


@dataclass
class RouterConfig:
    """Routing configuration (``configs/model_config_test/gmtrouter.yaml``)."""

    checkpoint: str
    candidates: list[str] | None = None
    encoder: str | None = None  # None: the encoder named in the checkpoint
    device: str | None = None
    feedback_log: str | None = None
    endpoints: dict[str, dict[str, Any]] = field(default_factory=dict)
    history_turns: int = 8
    #: torch intra-op threads for this process (routing is many tiny ops: 1 is fastest); None leaves it
    threads: int | None = None
    source: str | None = None
    #: online personalization (``gmt_model.method.personal.PersonalConfig`` keys); ``{enabled: false}`` = the GNN alone
    personalization: dict[str, Any] = field(default_factory=dict)
    #: routing policy: greedy (default), thompson (sample the user's posterior) or epsilon
    policy: str = "greedy"
    epsilon: float = 0.1
    seed: int | None = None
    #: replay the durable feedback log on start (rows newer than the checkpoint's training data)
    replay_feedback: bool = True
    #: seconds between reads of rows other processes appended to the log (0: every call; < 0: never)
    feedback_sync_interval: float = 1.0
    #: a user's GNN representation is computed from at most this many of the user's latest rated interactions
    history_window: int = 1000
    #: ... and recomputed once the user's history grew by this fraction since it was last computed (the online
    #: residual takes every feedback at once); 0 = after every feedback
    refresh_growth: float = 0.1
    #: users whose representation and posterior are kept in memory (least recently used are dropped, then
    #: recomputed on their next route)
    cache_users: int = 20000
    #: with a store read per user (PostgreSQL): users whose rated rows a router holds at most; the least recently
    #: used are dropped (rows, texts, caches) and read again from the store on their next use, identically
    max_loaded_users: int = 50000
    #: the LLM pool (``router.llms``): name -> {description, cost (USD per 1M tokens), endpoint}; None: the
    #: checkpoint's LLMs.  Pool changes made while serving live in the feedback log (``gmtrouter llms``)
    llms: dict[str, dict[str, Any]] | None = None
    #: default weight of cost against preference (``router.cost_weight``, >= 0; 0 = preference only)
    cost_weight: float = 0.0



def _read_yaml(path: str | Path) -> Any:
    """A YAML file's content ({} when empty); one-line ConfigError when missing or invalid."""
    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None


def load_router_config(path: str | Path, *, relative_to: str | Path | None = None) -> RouterConfig:
    """Read the routing YAML.  Accepts the seed's ``model_path.load_model_path``
    as the checkpoint and an optional ``router`` section::

        model_path: {load_model_path: ./saved_models/gmtrouter/gmtrouter.pt}
        router: {candidates: [...], encoder: ..., device: cpu, feedback_log: ./feedback.sqlite}
        endpoints: {gpt-4: {base_url: ..., model: ..., api_key_env: OPENAI_API_KEY}}
    """
    raw = _read_yaml(path)
    base = Path(relative_to) if relative_to is not None else Path.cwd()
    router = raw.get("router") or {}
    ckpt = router.get("checkpoint") or (raw.get("model_path") or {}).get("load_model_path")
    if not ckpt:
        raise ConfigError(f"{path}: model_path.load_model_path (or router.checkpoint): required, the trained checkpoint")
    unknown = set(router) - {"checkpoint", "candidates", "encoder", "device", "feedback_log", "history_turns",
                             "threads", "personalization", "policy", "epsilon", "seed", "replay_feedback",
                             "feedback_sync_interval", "history_window", "refresh_growth", "cache_users",
                             "max_loaded_users", "llms", "cost_weight"}
    if unknown:
        raise ConfigError(f"{path}: router: unknown keys {sorted(unknown)}")
    policy = router.get("policy", "greedy")
    if policy not in ("greedy", "thompson", "epsilon"):
        raise ConfigError(f"{path}: router.policy: expected greedy, thompson or epsilon, got {policy!r}")
    eps = router.get("epsilon", 0.1)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0.0 <= float(eps) <= 1.0:
        raise ConfigError(f"{path}: router.epsilon: expected a number in [0, 1], got {eps!r}")
    pers = router.get("personalization") or {}
    if not isinstance(pers, dict):
        raise ConfigError(f"{path}: router.personalization: expected a mapping")
    from gmt_model.method.personal import PersonalConfig

    try:
        PersonalConfig.from_dict(pers, "router.personalization")
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{path}: {e}") from None
    endpoints = raw.get("endpoints") or {}
    if not isinstance(endpoints, dict):
        raise ConfigError(f"{path}: endpoints: expected a mapping of LLM name -> endpoint")
    llms = _llm_pool(path, router.get("llms"))
    for name, spec in (llms or {}).items():  # an LLM's endpoint (a base URL) is an endpoints entry too
        if spec.get("endpoint") and name not in endpoints:
            endpoints = dict(endpoints, **{name: {"base_url": spec["endpoint"]}})
    cw = router.get("cost_weight", 0.0)
    if isinstance(cw, bool) or not isinstance(cw, (int, float)) or not math.isfinite(float(cw)) or cw < 0:
        raise ConfigError(f"{path}: router.cost_weight: expected a number >= 0, got {cw!r}")
    return RouterConfig(
        checkpoint=str(checkpoint_dir_from_model_path(_resolve(base, str(ckpt)))),
        candidates=router.get("candidates"),
        encoder=router.get("encoder"),
        device=router.get("device"),
        feedback_log=_resolve_store(base, router.get("feedback_log")),
        endpoints=endpoints,
        history_turns=int(router.get("history_turns", 8)),
        threads=int(router["threads"]) if router.get("threads") is not None else None,
        source=str(path),
        personalization=dict(pers),
        policy=str(policy),
        epsilon=float(eps),
        seed=int(router["seed"]) if router.get("seed") is not None else None,
        replay_feedback=bool(router.get("replay_feedback", True)),
        feedback_sync_interval=float(router.get("feedback_sync_interval", 1.0)),
        history_window=_positive_int(path, router, "history_window", 1000),
        refresh_growth=_fraction(path, router, "refresh_growth", 0.1),
        cache_users=_positive_int(path, router, "cache_users", 20000),
        max_loaded_users=_positive_int(path, router, "max_loaded_users", 50000),
        llms=llms,
        cost_weight=float(cw),
    )


def _llm_pool(path, raw: Any) -> dict[str, dict[str, Any]] | None:
    """``router.llms``: {name: {description, cost, endpoint}} (a bare string is the description)."""
    if raw is None:
        return None
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{path}: router.llms: expected a non-empty mapping of LLM name -> "
                          "{description, cost, endpoint}")
    out: dict[str, dict[str, Any]] = {}
    for name, spec in raw.items():
        where = f"{path}: router.llms.{name}"
        if isinstance(spec, str):
            spec = {"description": spec}
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: expected a mapping with description, cost, endpoint")
        unknown = set(spec) - {"description", "cost", "endpoint", "cost_date"}
        if unknown:
            raise ConfigError(f"{where}: unknown keys {sorted(unknown)}; known: cost, cost_date, description, endpoint")
        d = spec.get("description")
        if d is not None and (not isinstance(d, str) or not d.strip()):
            raise ConfigError(f"{where}.description: expected a non-empty string")
        c = spec.get("cost")
        if c is not None and (isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(float(c))
                              or c < 0):
            raise ConfigError(f"{where}.cost: expected a number >= 0 (USD per 1M tokens), got {c!r}")
        e = spec.get("endpoint")
        if e is not None and (not isinstance(e, str) or not e.strip()):
            raise ConfigError(f"{where}.endpoint: expected a base URL string")
        out[str(name)] = {"description": d, "cost": None if c is None else float(c), "endpoint": e,
                          "cost_date": spec.get("cost_date")}
    return out


def _positive_int(path, section: dict, key: str, default: int) -> int:
    v = section.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ConfigError(f"{path}: router.{key}: expected an integer >= 1, got {v!r}")
    return v


def _fraction(path, section: dict, key: str, default: float) -> float:
    v = section.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= float(v) <= 10.0:
        raise ConfigError(f"{path}: router.{key}: expected a number in [0, 10], got {v!r}")
    return float(v)
