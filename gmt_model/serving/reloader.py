"""The serving model: :class:`RouterHolder`, model sources and the :class:`ModelReloader`."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gmt_model.serving.http_errors import ServerConfigError

__all__ = ["ModelRef", "ReloadRefused", "ServedModel", "RouterHolder", "checkpoint_source", "registry_source",
           "check_compatible", "ModelReloader"]

log = logging.getLogger("gmt_model.serving.server")

@dataclass(frozen=True)
class ModelRef:
    """What a model source names now: ``uri`` as configured (``models:/x@champion`` or a
    checkpoint folder), its current ``version``, and the ``location`` to load it from."""

    uri: str
    version: str
    location: str


class ReloadRefused(ValueError):
    """A new model was built but does not fit this server (the current one keeps serving)."""


class ServedModel:
    """One router with its metadata (``uri``, ``version``, ``loaded_at``) and its call lock."""

    __slots__ = ("router", "info", "lock")

    def __init__(self, router: Any, info: Mapping[str, Any]) -> None:
        self.router = router
        self.info = dict(info)
        self.lock = threading.Lock()


class RouterHolder:
    """The reference to the serving router; :meth:`swap` replaces it in one assignment.

    A request reads :attr:`current` once and finishes on that router, so a
    swap never disturbs a request in flight.
    """

    def __init__(self, router: Any, info: Mapping[str, Any] | None = None) -> None:
        base = {"uri": None, "version": None}
        base.update(info or {})
        base["loaded_at"] = time.time()
        self._current = ServedModel(router, base)

    @property
    def current(self) -> ServedModel:
        return self._current

    @property
    def router(self) -> Any:
        return self._current.router

    def swap(self, router: Any, info: Mapping[str, Any]) -> ServedModel:
        """Serve ``router`` from now on; returns the previous :class:`ServedModel`."""
        new = ServedModel(router, {**info, "loaded_at": time.time()})
        old = self._current
        self._current = new
        return old


def checkpoint_source(path: str | os.PathLike[str]) -> Callable[[], ModelRef]:
    """A model source for a checkpoint folder: the version is the digest of its ``config.json`` and of the
    bytes of every file its manifest (``files``) lists, so any change of content is a new version: a folder
    caught half-written and later completed (or repaired) is a different version from the broken copy.
    A file's digest is cached by (size, mtime, inode), so an unchanged folder is not read again."""
    folder = Path(path)
    memo: dict[str, tuple[tuple[int, int, int], str]] = {}

    def digest(p: Path) -> str:
        try:
            st = p.stat()
        except FileNotFoundError:
            return "missing"
        key = (st.st_size, st.st_mtime_ns, st.st_ino)
        hit = memo.get(str(p))
        if hit is not None and hit[0] == key:
            return hit[1]
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        memo[str(p)] = (key, h.hexdigest())
        return memo[str(p)][1]

    def resolve() -> ModelRef:
        try:
            data = (folder / "config.json").read_bytes()
        except OSError as exc:
            raise OSError(f"{folder / 'config.json'}: {exc.strerror or exc}") from None
        h = hashlib.sha256(data)
        try:
            files = json.loads(data).get("files") or {}
        except (ValueError, AttributeError):
            files = {}  # a half-written config.json: its own digest names this state; loading it is refused
        if isinstance(files, dict):
            for name in sorted(files):
                if isinstance(name, str) and "/" not in name and "\\" not in name and name not in ("", ".", ".."):
                    try:
                        h.update(f"\0{name}\0{digest(folder / name)}".encode())
                    except OSError as exc:
                        raise OSError(f"{folder / name}: {exc.strerror or exc}") from None
        return ModelRef(uri=str(folder), version="sha256:" + h.hexdigest()[:16], location=str(folder))

    return resolve


def registry_source(uri: str, tracking_uri: str | None = None, *,
                    registry_uri: str | None = None) -> Callable[[], ModelRef]:
    """A model source for ``models:/<name>@<alias>`` (or ``models:/<name>/<version>``) in the
    MLflow registry: each call asks the registry which version the alias names now."""
    from gmt_model.serving import registry  # mlflow itself is imported lazily inside registry's functions

    name, _, _ = registry.parse_model_uri(uri)

    def resolve() -> ModelRef:
        version = registry.resolve_model_version(uri, tracking_uri, registry_uri=registry_uri)
        return ModelRef(uri=uri, version=str(version), location=f"models:/{name}/{version}")

    return resolve


def check_compatible(old: Any, new: Any) -> None:
    """Refuse (``ReloadRefused``) a new router that would change the serving API under the
    clients' feet: LLMs the current router routes to are missing, or the query encoder's width
    differs from the model's (loads the encoder, so the first request after the swap is fast)."""
    have = set(getattr(new, "candidates", None) or [])
    missing = [c for c in (getattr(old, "candidates", None) or []) if c not in have]
    if missing:
        raise ReloadRefused(f"the new model lacks LLM(s) {missing} that this server routes to "
                            "(restart the server to change the set of LLMs)")
    want = getattr(getattr(getattr(new, "model", None), "cfg", None), "embed_dim", None)
    if want is None:
        return
    enc = getattr(new, "encoder", None)  # GMTRouter: loads it, RoutingError on a width mismatch
    dim = getattr(enc, "dim", None)
    if dim is not None and int(dim) != int(want):
        raise ReloadRefused(f"the query encoder gives width {dim}, the new model expects {want}")


def _sync_feedback(router: Any) -> None:
    sync = getattr(router, "sync_feedback", None)
    if callable(sync) and getattr(router, "feedback_log", None) is not None:
        sync()


class ModelReloader:
    """Polls a model source and swaps in a new router when it names a new version.

    ``resolve()`` returns the :class:`ModelRef` the source names now (it may
    raise when the registry is unreachable: the current model keeps serving
    and the next poll retries).  ``build(ref, current_router)`` builds the new
    router (``GMTRouter``'s constructor replays the feedback log rows newer
    than the new model's training data); ``check(old, new)`` may refuse it.
    A build that fails with a ``ValueError`` (``CheckpointError``,
    ``RoutingError``, ``ReloadRefused``...) refuses that version: it is logged,
    the current model keeps serving and polling does not rebuild it (an
    explicit :meth:`reload` does).  Other failures (network, registry) are
    retried at the next poll.  After the swap the new router syncs feedback
    that reached the log while it was being built.
    """

    def __init__(self, holder: RouterHolder, resolve: Callable[[], ModelRef],
                 build: Callable[[ModelRef, Any], Any], *, interval: float = 0.0,
                 check: Callable[[Any, Any], None] | None = check_compatible) -> None:
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not math.isfinite(interval) \
                or interval < 0:
            raise ServerConfigError(f"reload interval: expected a number of seconds >= 0, got {interval!r}")
        self.holder = holder
        self.resolve = resolve
        self.build = build
        self.interval = float(interval)
        self.check = check
        self._lock = threading.Lock()
        self._refused: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.counts = {"reloaded": 0, "unchanged": 0, "refused": 0, "unavailable": 0}
        self.last: dict[str, Any] = {"status": None, "at": None, "version": None, "error": None}

    # ---------------------------------------------------------------- one check
    def reload(self, *, retry_refused: bool = True) -> dict[str, Any]:
        """Check the source now; build, check and swap when it names a new version.

        Returns ``{"status": "reloaded" | "unchanged" | "refused" | "unavailable",
        "version", "uri", "previous"?, "candidate"?, "error"?}`` (``version``: the
        version serving after the call).  Never raises for a bad model or an
        unreachable source.
        """
        with self._lock:
            out = self._reload(retry_refused)
            self.counts[out["status"]] = self.counts.get(out["status"], 0) + 1
            self.last = {"status": out["status"], "at": time.time(),
                         "version": out.get("candidate", out["version"]), "error": out.get("error")}
        return out

    def _result(self, status: str, **extra: Any) -> dict[str, Any]:
        info = self.holder.current.info
        out = {"status": status, "version": info.get("version"), "uri": info.get("uri")}
        out.update({k: v for k, v in extra.items() if v is not None})
        return out

    def _reload(self, retry_refused: bool) -> dict[str, Any]:
        from gmt_model.errors import one_line

        current = self.holder.current
        serving = current.info.get("version")
        try:
            ref = self.resolve()
        except Exception as exc:  # registry or tracking server down, folder being replaced
            msg = f"cannot resolve the model source: {one_line(exc)}"
            log.warning("model reload: %s; version %s keeps serving, retrying at the next check", msg, serving)
            return self._result("unavailable", error=msg)
        if ref.version == serving:
            return self._result("unchanged")
        if not retry_refused and ref.version in self._refused:
            return self._result("refused", candidate=ref.version, error=self._refused[ref.version])
        log.info("model reload: %s names version %s (serving %s); building the new router in the background",
                 ref.uri, ref.version, serving)
        t0 = time.perf_counter()
        try:
            new = self.build(ref, current.router)
            if self.check is not None:
                self.check(current.router, new)
        except Exception as exc:
            msg = f"{ref.uri} version {ref.version}: {one_line(exc)}"
            if isinstance(exc, ValueError):
                self._refused[ref.version] = msg
                log.error("model reload refused: %s; version %s keeps serving", msg, serving)
                return self._result("refused", candidate=ref.version, error=msg)
            log.warning("model reload failed: %s; version %s keeps serving, retrying at the next check", msg,
                        serving, exc_info=log.isEnabledFor(logging.DEBUG))
            return self._result("unavailable", candidate=ref.version, error=msg)
        _sync_feedback(new)
        old = self.holder.swap(new, {"uri": ref.uri, "version": ref.version, "location": ref.location})
        served = self.holder.current
        try:  # feedback stored by requests that were still running on the old router
            with served.lock:
                _sync_feedback(new)
        except Exception as exc:  # the new router serves anyway; its own periodic sync catches up
            log.warning("model reload: feedback sync after the swap failed: %s", one_line(exc))
        self._refused.pop(ref.version, None)
        log.warning("model reload: now serving %s version %s (was %s; built in %.1f s)", ref.uri, ref.version,
                    old.info.get("version"), time.perf_counter() - t0)
        return self._result("reloaded", previous=old.info.get("version"))

    # ---------------------------------------------------------------- polling
    def start(self) -> None:
        """Poll every ``interval`` seconds in a daemon thread (no-op when the interval is 0)."""
        if self.interval <= 0 or (self._thread is not None and self._thread.is_alive()):
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, name="gmtrouter-model-reload", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.reload(retry_refused=False)
            except Exception:  # never let the poller die
                log.exception("model reload: unexpected failure; polling goes on")

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)

    def status(self) -> dict[str, Any]:
        return {"interval_s": self.interval, "polling": self._thread is not None and self._thread.is_alive(),
                "last_check": dict(self.last)}


