"""Datasets: from a configured source to GMTRouter JSONL splits.

Two steps, each a plain function (the Dagster assets call them; no Dagster
here):

* :func:`prepare_raw` gets a dataset's raw data into a folder: it downloads
  (``gmt_model.data.sources.fetch``: resume, retries, sha256) and extracts
  archives safely, reads a local folder in place, or, for ``demo``,
  generates raw conversations offline.
* :func:`build_jsonl` turns raw data into ``training_set.jsonl``,
  ``valid_set.jsonl`` and ``test_set.jsonl`` (``schema.SPLIT_FILES``):
  converts raw judgments to records (``gmt_model.data.convert``), embeds queries
  and LLM descriptions with the encoder (``gmt_model.data.demo.embed_records``),
  splits groups per user (``gmt_model.data.splits.split_groups``: every user keeps
  history in training), writes atomically (``gmt_model.data.jsonl.write_jsonl``)
  and validates the result.  Data already in the GMTRouter format (the
  GMTRouter release) keeps its splits; it is copied through when its
  ``encoder`` equals the configured encoder's name and re-embedded otherwise.

Sources are configured in ``configs/datasets.yaml`` (see its comments);
LLM descriptions in ``configs/llm_descriptions.yaml``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from gmt_model.data import demo as demo_mod
from gmt_model.atomic import copy_file_atomic, write_lines_atomic, write_text_atomic
from gmt_model.data.convert import ConversionError, ConversionStats, convert_raw, find_mt_bench_files
from gmt_model.data.jsonl import iter_groups, validate_file, write_jsonl
from gmt_model.paths import config_path
from gmt_model.method.schema import (
    F_CONVERSATION,
    F_JUDGE,
    F_MODEL,
    F_QUERY,
    F_QUESTION_ID,
    F_RATING,
    F_RESPONSE,
    F_TURN,
    SPLIT_FILES,
    SPLITS,
)
from gmt_model.data.sources import SourceError, extract, fetch, sha256_file
from gmt_model.data.splits import DEFAULT_FRACTIONS, split_groups, split_summary, thin_users

__all__ = [
    "DATASETS",
    "SOURCE_KINDS",
    "CONVERTED_KINDS",
    "SPLIT_KINDS",
    "DEFAULT_DATASETS_CONFIG",
    "DEFAULT_LLM_DESCRIPTIONS",
    "DEFAULT_MIN_USER_GROUPS",
    "SourceConfig",
    "RawResult",
    "JsonlResult",
    "load_source_config",
    "load_llm_descriptions",
    "llm_description_map",
    "prepare_raw",
    "build_jsonl",
    "split_raw",
    "SplitPlan",
]

log = logging.getLogger(__name__)

DATASETS = ("demo", "mt_bench", "chatbot_arena", "gsm8k", "mmlu")
SOURCE_KINDS = ("demo", "gmtrouter_release", "mt_bench_split", "mt_bench_hf", "chatbot_arena", "jsonl_splits")
#: kinds whose raw data is converted by gmt_model.data.convert
CONVERTED_KINDS = ("mt_bench_split", "mt_bench_hf", "chatbot_arena")
#: kinds whose raw data is already GMTRouter JSONL splits
SPLIT_KINDS = ("gmtrouter_release", "jsonl_splits")

DEFAULT_DATASETS_CONFIG = "configs/datasets.yaml"
DEFAULT_LLM_DESCRIPTIONS = "configs/llm_descriptions.yaml"
#: users with fewer training groups than this are reported as thin
DEFAULT_MIN_USER_GROUPS = 3
#: raw file written by prepare_raw for the demo dataset
DEMO_RAW_FILE = demo_mod.RAW_FILE
DEMO_TRUTH_FILE = demo_mod.TRUTH_FILE
_ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".zip")


# --------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class SourceConfig:
    """Where one dataset's raw data comes from (one entry of ``configs/datasets.yaml``)."""

    dataset: str
    kind: str
    url: str | None = None
    sha256: str | None = None
    path_in_archive: str | None = None
    filename: str | None = None
    size: str | None = None  # demo preset (tiny / small / medium / large)
    seed: int = 0  # demo generation seed
    download_dir: str | None = None
    retries: int = 3
    timeout: float = 60.0
    #: how to set the URL (used in error messages)
    config_key: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return asdict(self)


_CONFIG_FIELDS = {f.name for f in fields(SourceConfig)} - {"dataset", "config_key"}


def _resolve(path: str | os.PathLike[str]) -> Path:
    """A relative ``configs/...`` path missing from the working folder is the package's default copy."""
    return config_path(path)


def _env_names(dataset: str) -> tuple[str, str]:
    stem = f"GMTROUTER_{dataset.upper()}"
    return f"{stem}_URL", f"{stem}_SHA256"


def load_source_config(
    dataset: str,
    path: str | os.PathLike[str] = DEFAULT_DATASETS_CONFIG,
    overrides: Mapping[str, Any] | None = None,
    *,
    env: Mapping[str, str] | None = None,
) -> SourceConfig:
    """The source of ``dataset`` from ``path``, with environment and explicit overrides.

    Precedence (strongest first): ``overrides`` (e.g. Dagster run config;
    ``None`` values are ignored), ``GMTROUTER_<DATASET>_URL`` /
    ``GMTROUTER_<DATASET>_SHA256``, for ``gmtrouter_release`` datasets
    ``GMTROUTER_RELEASE_URL`` / ``GMTROUTER_RELEASE_SHA256``, the file's
    ``datasets.<dataset>`` entry, the file's ``defaults``.  Unknown keys are
    errors (they are usually typos).
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")
    env = os.environ if env is None else env
    cfg_path = _resolve(path)
    try:
        doc = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise FileNotFoundError(f"dataset source config {cfg_path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{cfg_path}: invalid YAML: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("datasets"), dict):
        raise ValueError(f"{cfg_path}: expected a mapping with a 'datasets' mapping")
    entry = doc["datasets"].get(dataset)
    if not isinstance(entry, dict):
        raise ValueError(f"{cfg_path}: no entry datasets.{dataset} (a mapping with at least 'kind')")
    merged: dict[str, Any] = {}
    for where, part in ((f"{cfg_path}: defaults", doc.get("defaults") or {}),
                        (f"{cfg_path}: datasets.{dataset}", entry)):
        if not isinstance(part, dict):
            raise ValueError(f"{where}: expected a mapping")
        for k, v in part.items():
            if k not in _CONFIG_FIELDS:
                raise ValueError(f"{where}: unknown key {k!r}; expected one of {sorted(_CONFIG_FIELDS)}")
            merged[k] = v
    url_var, sha_var = _env_names(dataset)
    env_keys = [url_var]
    if merged.get("kind") == "gmtrouter_release":
        env_keys.append("GMTROUTER_RELEASE_URL")
        for var, key in (("GMTROUTER_RELEASE_URL", "url"), ("GMTROUTER_RELEASE_SHA256", "sha256")):
            if env.get(var):
                merged[key] = env[var]
    for var, key in ((url_var, "url"), (sha_var, "sha256")):
        if env.get(var):
            merged[key] = env[var]
    for k, v in (overrides or {}).items():
        if k not in _CONFIG_FIELDS:
            raise ValueError(f"override: unknown key {k!r}; expected one of {sorted(_CONFIG_FIELDS)}")
        if v is not None:
            merged[k] = v
    kind = merged.get("kind")
    if kind not in SOURCE_KINDS:
        raise ValueError(f"{cfg_path}: datasets.{dataset}.kind: expected one of {SOURCE_KINDS}, got {kind!r}")
    config_key = (f"datasets.{dataset}.url in {cfg_path} (or the environment variable "
                  f"{' or '.join(env_keys)}, or the url override)")
    try:
        return SourceConfig(
            dataset=dataset,
            kind=kind,
            url=None if merged.get("url") in (None, "") else str(merged["url"]),
            sha256=None if merged.get("sha256") in (None, "") else str(merged["sha256"]),
            path_in_archive=merged.get("path_in_archive"),
            filename=merged.get("filename"),
            size=None if merged.get("size") is None else str(merged["size"]),
            seed=int(merged.get("seed", 0)),
            download_dir=merged.get("download_dir"),
            retries=int(merged.get("retries", 3)),
            timeout=float(merged.get("timeout", 60.0)),
            config_key=config_key,
        )
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{cfg_path}: datasets.{dataset}: {exc}") from exc


def load_llm_descriptions(path: str | os.PathLike[str] = DEFAULT_LLM_DESCRIPTIONS) -> dict[str, str]:
    """``{model name: description}`` from ``configs/llm_descriptions.yaml`` (key ``llms``)."""
    p = _resolve(path)
    doc = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    llms = doc.get("llms") if isinstance(doc, dict) else None
    if not isinstance(llms, dict):
        raise ValueError(f"{p}: expected a mapping 'llms: {{model name: description}}'")
    out: dict[str, str] = {}
    for k, v in llms.items():
        if not isinstance(v, str) or not v.strip():
            raise ValueError(f"{p}: llms.{k}: expected a non-empty description string")
        out[str(k)] = " ".join(v.split())
    return out


def llm_description_map(models: Iterable[str], descriptions: Mapping[str, str] | None = None) -> dict[str, str]:
    """A description for every model: ``descriptions``, then the demo's, then the name itself."""
    descriptions = load_llm_descriptions() if descriptions is None else descriptions
    return {m: descriptions.get(m) or demo_mod.LLM_DESCRIPTIONS.get(m) or m for m in models}


# --------------------------------------------------------------------------
# prepare_raw
# --------------------------------------------------------------------------
@dataclass
class RawResult:
    """Raw data of one dataset, ready for :func:`build_jsonl`."""

    dataset: str
    kind: str
    path: Path  # the file or folder build_jsonl reads
    source: str | None = None  # the URL or path it came from
    downloaded: Path | None = None  # the fetched file (None: read in place / generated)
    sha256: str | None = None  # of the fetched file
    n_bytes: int | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        d = asdict(self)
        for k in ("path", "downloaded"):
            d[k] = None if d[k] is None else os.fspath(d[k])
        return d


def _local_dir(url: str) -> Path | None:
    """The folder a file:// URL or path names, if it is an existing folder."""
    if url.startswith(("http://", "https://")):
        return None
    if url.startswith("file:"):
        from urllib.parse import urlparse
        from urllib.request import url2pathname

        p = Path(url2pathname(urlparse(url).path))
    else:
        p = Path(url)
    return p if p.is_dir() else None


def _is_archive(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(_ARCHIVE_SUFFIXES)


def _write_json_lines(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Plain JSON lines, atomically."""
    return write_lines_atomic(path, (json.dumps(row, ensure_ascii=False, separators=(",", ":")) for row in rows))


def _sub(root: Path, rel: str | None, source: SourceConfig) -> Path:
    if not rel:
        return root
    if Path(rel).is_absolute() or ".." in Path(rel).parts:
        raise SourceError(f"dataset {source.dataset!r}: path_in_archive {rel!r} must be a relative path inside it")
    p = root / rel
    if not p.exists():
        found = sorted(str(q.relative_to(root)) for q in root.rglob("*") if q.is_dir())[:20]
        raise SourceError(f"dataset {source.dataset!r}: {rel!r} not found in {root} (set "
                          f"datasets.{source.dataset}.path_in_archive); folders there: {found}")
    return p


def prepare_raw(dataset: str, source: SourceConfig, raw_dir: str | os.PathLike[str]) -> RawResult:
    """Get ``dataset``'s raw data into ``raw_dir`` as ``source`` says.

    * ``demo``: generates the raw conversations (``raw_conversations.jsonl``,
      no embeddings) and ``truth.json`` offline with ``gmt_model.data.demo``
      (preset ``source.size``, seed ``source.seed``).
    * a local folder (path or ``file://`` URL): read in place (nothing copied).
    * otherwise the URL is fetched (resume, retries, sha256 when configured)
      into ``source.download_dir`` or ``raw_dir/download``; an archive is
      extracted safely into ``raw_dir/extracted``.

    For ``gmtrouter_release`` / ``jsonl_splits`` the result's path is the
    folder holding the three split files (``path_in_archive`` inside the
    archive).  A missing URL raises :class:`~gmt_model.data.sources.SourceError`
    saying which key or environment variable to set.
    """
    if dataset != source.dataset:
        raise ValueError(f"source config is for dataset {source.dataset!r}, not {dataset!r}")
    raw = Path(raw_dir)
    raw.mkdir(parents=True, exist_ok=True)
    if source.kind == "demo":
        return _prepare_demo(dataset, source, raw)
    if not source.url:
        raise SourceError(f"dataset {dataset!r} ({source.kind}) has no source URL: set {source.config_key}")
    local = _local_dir(source.url)
    downloaded: Path | None = None
    digest: str | None = None
    if local is not None:
        if source.sha256:
            raise SourceError(f"dataset {dataset!r}: sha256 is set but the source {source.url!r} is a folder; "
                              f"unset datasets.{dataset}.sha256 or point the url at an archive")
        root = local
    else:
        dl_dir = Path(source.download_dir) if source.download_dir else raw / "download"
        downloaded = fetch(source.url, dl_dir, filename=source.filename, sha256=source.sha256,
                           retries=source.retries, timeout=source.timeout, config_key=source.config_key)
        digest = sha256_file(downloaded)
        root = extract(downloaded, raw / "extracted") if _is_archive(downloaded) else downloaded
    path = _sub(root, source.path_in_archive, source) if root.is_dir() else root
    if source.kind in SPLIT_KINDS:
        if not path.is_dir():
            raise SourceError(f"dataset {dataset!r}: expected a folder of split files, got the file {path}")
        missing = [SPLIT_FILES[s] for s in SPLITS if not (path / SPLIT_FILES[s]).is_file()]
        if missing:
            raise SourceError(f"dataset {dataset!r}: {path} lacks {missing} (set datasets.{dataset}.path_in_archive "
                              f"to the folder holding {list(SPLIT_FILES.values())})")
    elif source.kind == "mt_bench_split":
        try:
            find_mt_bench_files(path)
        except ConversionError as exc:
            raise SourceError(f"dataset {dataset!r}: {exc}") from exc
    n_bytes = downloaded.stat().st_size if downloaded is not None else None
    return RawResult(dataset=dataset, kind=source.kind, path=path, source=source.url, downloaded=downloaded,
                     sha256=digest, n_bytes=n_bytes)


def _prepare_demo(dataset: str, source: SourceConfig, raw: Path) -> RawResult:
    spec = demo_mod.DemoSpec.preset(source.size or "tiny", seed=int(source.seed))
    groups, truth = demo_mod.iter_conversations(spec)
    out = raw / DEMO_RAW_FILE
    n = _write_json_lines(out, (rec for group in groups for rec in group))
    truth_doc = truth.to_dict()
    truth_doc["spec"] = spec.to_dict()
    write_text_atomic(raw / DEMO_TRUTH_FILE, json.dumps(truth_doc, sort_keys=True, indent=1))
    return RawResult(dataset=dataset, kind="demo", path=out, source=f"gmt_model.data.demo:{spec.name}",
                     info={"spec": spec.to_dict(), "n_records": n})


# --------------------------------------------------------------------------
# build_jsonl
# --------------------------------------------------------------------------
@dataclass
class JsonlResult:
    """What :func:`build_jsonl` wrote."""

    dataset: str
    out_dir: Path
    paths: dict[str, Path]  # split -> file
    encoder_name: str
    encoder_dim: int
    n_groups: dict[str, int]
    n_records: dict[str, int]
    n_users: int
    thin_users: dict[str, int]  # user -> training groups, for users below min_user_groups
    min_user_groups: int
    splits: dict[str, dict[str, int]]  # split -> {groups, users}
    summaries: dict[str, dict[str, Any]]  # split -> gmt_model.data.jsonl.FileSummary.to_dict()
    mode: str  # "converted", "copied" or "reembedded"
    conversion: dict[str, Any] | None = None  # ConversionStats.to_dict() for converted raw data

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        d = asdict(self)
        d["out_dir"] = os.fspath(self.out_dir)
        d["paths"] = {k: os.fspath(v) for k, v in self.paths.items()}
        return d


def _infer_kind(dataset: str, path: Path) -> str:
    if dataset == "demo" or path.name == DEMO_RAW_FILE:
        return "demo"
    if path.is_dir():
        if all((path / SPLIT_FILES[s]).is_file() for s in SPLITS):
            return "jsonl_splits"
        try:
            find_mt_bench_files(path)
            return "mt_bench_split"
        except ConversionError:
            pass
    return "mt_bench_hf" if dataset == "mt_bench" else "chatbot_arena"


def _read_json_lines(path: Path) -> list[dict[str, Any]]:
    out = []
    with open(path, encoding="utf-8") as fh:
        for i, line in enumerate(fh, start=1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ConversionError(path, i, None, f"invalid JSON ({exc.msg})") from exc
    return out


def _group_bounds(records: Sequence[dict[str, Any]]) -> list[tuple[int, int]]:
    """[start, end) of each run of consecutive records sharing (question_id, turn, judge)."""
    bounds: list[tuple[int, int]] = []
    start = 0
    for i in range(1, len(records) + 1):
        if i == len(records) or _key(records[i]) != _key(records[start]):
            bounds.append((start, i))
            start = i
    return bounds


def _key(rec: Mapping[str, Any]) -> tuple[str, int, str]:
    return (str(rec[F_QUESTION_ID]), int(rec[F_TURN]), str(rec[F_JUDGE]))


def _separate_equal_keys(order: list[int], keys: Sequence[tuple[str, int, str]], split: str) -> list[int]:
    """``order`` (group indices of one split file) rearranged so no two neighbours share a key.

    Groups are runs of consecutive records, so two groups with the same
    ``(question_id, turn, judge)`` written next to each other would read
    back as one group.  Groups that already alternate keep their order; a
    group that would touch its twin is moved to the next place where it does
    not.  When only twins are left at the end, the split is rearranged as a
    whole (most frequent key first, in file order within a key); when that
    is impossible too (one key holds more than half the split's groups),
    ``ValueError`` says so.
    """
    out = list(order)
    i = 1
    while i < len(out):
        k = keys[out[i]]
        if k != keys[out[i - 1]]:
            i += 1
            continue
        j = next((j for j in range(i + 1, len(out)) if keys[out[j]] != k), None)
        if j is None:
            return _interleave(out, keys, split)
        out.insert(i, out.pop(j))  # the moved group differs from both new neighbours
        i += 1
    return out


def _interleave(order: list[int], keys: Sequence[tuple[str, int, str]], split: str) -> list[int]:
    """Any arrangement of ``order`` without equal neighbouring keys (greedy by remaining count)."""
    import heapq

    by_key: dict[tuple[str, int, str], list[int]] = {}
    for x in order:
        by_key.setdefault(keys[x], []).append(x)
    k, members = max(by_key.items(), key=lambda kv: len(kv[1]))
    if 2 * len(members) > len(order) + 1:
        raise ValueError(
            f"the {split} split holds {len(members)} of its {len(order)} comparisons with the same "
            f"(question_id={k[0]!r}, turn={k[1]}, judge={k[2]!r}): they cannot all be kept apart, and written "
            f"next to each other they would read back as one group (use other split fractions or another seed)")
    first = {key: n for n, key in enumerate(by_key)}
    heap = [(-len(v), first[key], key) for key, v in by_key.items()]
    heapq.heapify(heap)
    pos = {key: 0 for key in by_key}
    out: list[int] = []
    held = None
    while heap:
        count, rank, key = heapq.heappop(heap)
        out.append(by_key[key][pos[key]])
        pos[key] += 1
        if held is not None:
            heapq.heappush(heap, held)
        held = (count + 1, rank, key) if count + 1 < 0 else None
    return out


def _resolve_encoder(encoder: Any) -> Any:
    if encoder is None or isinstance(encoder, (str, os.PathLike)):
        from gmt_model.data.encoder import get_encoder

        return get_encoder(encoder)
    return encoder


def build_jsonl(
    dataset: str,
    raw: RawResult | str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    encoder: Any = None,
    *,
    seed: int = 0,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    min_user_groups: int = DEFAULT_MIN_USER_GROUPS,
    llm_descriptions: Mapping[str, str] | None = None,
    on_conflict: str = "first",
) -> JsonlResult:
    """Write ``out_dir/{training,valid,test}_set.jsonl`` for ``dataset`` from ``raw``.

    ``raw`` is a :class:`RawResult` or a path (its kind is then inferred).
    ``encoder`` is an ``Encoder`` (``.name``, ``.dim``, ``.encode``), an
    encoder name, or None for the default (all-MiniLM-L6-v2).

    Raw judgments and demo conversations are converted, embedded and split
    per user (``fractions``, ``seed``; every user keeps at least one group in
    training).  Raw data already in splits keeps them: each file is
    validated, then copied through when its ``encoder`` equals the encoder's
    name, or re-embedded (queries and LLM descriptions) otherwise.  Every
    written file is validated with ``gmt_model.data.jsonl.validate_file``.  Users
    with fewer than ``min_user_groups`` training groups are reported in
    ``thin_users`` (they are kept).
    """
    raw_res = raw if isinstance(raw, RawResult) else RawResult(
        dataset=dataset, kind=_infer_kind(dataset, Path(raw)), path=Path(raw))
    if raw_res.dataset != dataset:
        raise ValueError(f"raw data is for dataset {raw_res.dataset!r}, not {dataset!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    enc = _resolve_encoder(encoder)
    descriptions = load_llm_descriptions() if llm_descriptions is None else dict(llm_descriptions)
    if raw_res.kind in SPLIT_KINDS:
        return _build_from_splits(dataset, raw_res.path, out, enc, descriptions, min_user_groups)
    plan = split_raw(dataset, raw_res, seed=seed, fractions=fractions, on_conflict=on_conflict)
    models = sorted({r[F_MODEL] for groups in plan.groups.values() for g in groups for r in g})
    desc = llm_description_map(models, descriptions)
    paths: dict[str, Path] = {}
    for s in SPLITS:
        rows = [r for g in plan.groups[s] for r in g]
        paths[s] = out / SPLIT_FILES[s]
        write_jsonl(paths[s], demo_mod.embed_records(rows, enc, desc))
    return _result(dataset, out, paths, enc, plan.group_users, plan.split_of, min_user_groups, "converted",
                   plan.conversion)


@dataclass
class SplitPlan:
    """Raw data cut into splits: per split the ordered groups of (un-embedded) record dicts."""

    groups: dict[str, list[list[dict[str, Any]]]]
    group_users: list[str]  # the user of each group (any order), with split_of
    split_of: list[str]
    conversion: dict[str, Any] | None  # ConversionStats.to_dict() for converted raw judgments


def split_raw(dataset: str, raw: RawResult, *, seed: int = 0, fractions: Sequence[float] = DEFAULT_FRACTIONS,
              on_conflict: str = "first") -> SplitPlan:
    """Raw judgments (converted) or demo conversations -> groups per split, split per user.

    Every user keeps at least one group in training (``gmt_model.data.splits.split_groups``); within a split no
    two neighbouring groups share ``(question_id, turn, judge)``.  The JSONL writer (:func:`build_jsonl`)
    and the columnar pipeline cut the data with this one function.
    """
    conversion: ConversionStats | None = None
    if raw.kind == "demo":
        records = _read_json_lines(raw.path)
    elif raw.kind in CONVERTED_KINDS:
        records, conversion = convert_raw(raw.kind, raw.path, on_conflict=on_conflict)  # type: ignore[arg-type]
    else:
        raise ValueError(f"unknown raw kind {raw.kind!r}; expected one of {SOURCE_KINDS}")
    if not records:
        raise ValueError(f"dataset {dataset!r}: no records in {raw.path}")
    bounds = _group_bounds(records)
    keys = [_key(records[s]) for s, _ in bounds]
    group_users = [k[2] for k in keys]
    split_of = split_groups(group_users, fractions, seed=seed)
    for s in SPLITS:
        if not (split_of == s).any():
            raise ValueError(f"dataset {dataset!r}: the {s} split would be empty ({len(bounds)} groups, "
                             f"fractions {tuple(fractions)}); the data is too small for these fractions")
    groups = {s: [records[bounds[j][0]:bounds[j][1]]
                  for j in _separate_equal_keys([j for j, sp in enumerate(split_of) if sp == s], keys, s)]
              for s in SPLITS}
    return SplitPlan(groups=groups, group_users=group_users, split_of=list(split_of),
                     conversion=conversion.to_dict() if conversion is not None else None)


def _result(dataset: str, out: Path, paths: dict[str, Path], enc: Any, group_users: list[str],
            split_of: list[str], min_user_groups: int, mode: str,
            conversion: dict[str, Any] | None) -> JsonlResult:
    summaries = {s: validate_file(p).to_dict() for s, p in paths.items()}
    dims = {v["dim"] for v in summaries.values()}
    if dims != {int(enc.dim)}:
        raise ValueError(f"dataset {dataset!r}: written embedding widths {sorted(dims)} differ from "
                         f"the encoder's {enc.dim}")
    return JsonlResult(
        dataset=dataset, out_dir=out, paths=paths, encoder_name=enc.name, encoder_dim=int(enc.dim),
        n_groups={s: v["n_groups"] for s, v in summaries.items()},
        n_records={s: v["n_records"] for s, v in summaries.items()},
        n_users=len(set(group_users)),
        thin_users=thin_users(group_users, split_of, min_training_groups=min_user_groups),
        min_user_groups=min_user_groups,
        splits={k: dict(v) for k, v in split_summary(group_users, split_of).items()},
        summaries=summaries, mode=mode, conversion=conversion,
    )


def _build_from_splits(dataset: str, src_dir: Path, out: Path, enc: Any, descriptions: Mapping[str, str],
                       min_user_groups: int) -> JsonlResult:
    srcs = {s: src_dir / SPLIT_FILES[s] for s in SPLITS}
    group_users: list[str] = []
    split_of: list[str] = []
    encoders: set[str | None] = set()
    plans: dict[str, list[dict[str, Any]]] = {}
    for s, p in srcs.items():
        if not p.is_file():
            raise SourceError(f"dataset {dataset!r}: missing split file {p}")
        rows: list[dict[str, Any]] = []
        # iter_groups checks every format rule; FormatError names file, line and field
        for group in iter_groups(p):
            group_users.append(group.judge)
            split_of.append(s)
            for rec in group.records:
                encoders.add(rec.encoder)
                rows.append({F_JUDGE: rec.judge, F_MODEL: rec.model, F_QUESTION_ID: rec.question_id,
                             F_TURN: rec.turn, F_CONVERSATION: [
                                 {F_QUERY: t.query, F_RESPONSE: t.response, F_RATING: t.rating}
                                 for t in rec.conversation]})
        plans[s] = rows
    paths = {s: out / SPLIT_FILES[s] for s in SPLITS}
    if encoders == {enc.name}:
        log.info("dataset %s: split files already use encoder %s; copying", dataset, enc.name)
        for s in SPLITS:
            if srcs[s].resolve() != paths[s].resolve():
                copy_file_atomic(srcs[s], paths[s])
        mode = "copied"
    else:
        log.info("dataset %s: re-embedding (files use %s, encoder is %s)", dataset,
                 sorted(str(e) for e in encoders), enc.name)
        models = sorted({r[F_MODEL] for rows in plans.values() for r in rows})
        desc = llm_description_map(models, descriptions)
        for s in SPLITS:
            write_jsonl(paths[s], demo_mod.embed_records(plans[s], enc, desc))
        mode = "reembedded"
    return _result(dataset, out, paths, enc, group_users, split_of, min_user_groups, mode, None)
