"""Hot reload of the serving model (issue 9 item 3), over HTTP on 127.0.0.1.

Real ``GMTRouter`` objects on tiny checkpoints (random weights, written in
milliseconds, no training) and a hashing query encoder; the model source is
a fake registry that the test repoints (``FakeRegistry``), or a checkpoint
folder that the test replaces (the code path of ``gmtrouter serve --model
<folder>``).  No MLflow server is needed.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from gmt_model.method.checkpoint import History, save_checkpoint
from gmt_model.method.config import RouterConfig
from gmt_model.serving.feedback import FeedbackLog
from gmt_model.method.model import GMTModel, ModelConfig
from gmt_model.serving.router import GMTRouter
from gmt_model.serving.server import (ModelRef, ModelReloader, RouterHolder, ServerConfigError, checkpoint_source,
                              create_app)
from servers import ServerThread

ADMIN = "admin-token-for-tests-123"
LLMS = ["alpha", "beta", "gamma"]
DIM = 8


# ---------------------------------------------------------------------------
# tiny models (shared with the other test_server_* modules)
# ---------------------------------------------------------------------------
class HashEncoder:
    """Deterministic query embeddings from a hash of the text (any text, any width)."""

    name = "hash"

    def __init__(self, dim: int = DIM) -> None:
        self.dim = dim

    def encode(self, texts: list[str]) -> np.ndarray:
        out = [np.random.default_rng(int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little"))
               .normal(size=self.dim) for t in texts]
        return np.asarray(out, dtype=np.float32).reshape(len(texts), self.dim)


def tiny_checkpoint(path: Path, seed: int, llms: list[str] = LLMS, users: tuple[str, ...] = ("u1", "u2")) -> Path:
    """A valid checkpoint folder with random weights (no training)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = GMTModel(ModelConfig(embed_dim=DIM, hidden_dim=16, heads=2, predictor_dim=16, predictor_heads=2))
    n = 8
    hist = History(user=np.arange(n, dtype=np.int64) % len(users), llm=np.arange(n, dtype=np.int64) % len(llms),
                   rating=rng.random(n).astype(np.float32), prev=np.full(n, -1, np.int64),
                   query_emb=rng.normal(size=(n, DIM)).astype(np.float32),
                   llm_emb=rng.normal(size=(len(llms), DIM)).astype(np.float32))
    return save_checkpoint(path, model, users=list(users), llms=list(llms), history=hist, encoder="hash",
                           rating_scale=(1.0, 5.0))


def tiny_router(ckpt: Path, feedback_log: Path | None = None, encoder: Any = None) -> GMTRouter:
    cfg = RouterConfig(checkpoint=str(ckpt), feedback_log=str(feedback_log) if feedback_log else None)
    return GMTRouter(config=cfg, encoder=encoder or HashEncoder())


class FakeRegistry:
    """Stands in for ``models:/gmtrouter-demo@champion``: ``point(version)`` moves the alias,
    ``down = True`` makes the registry unreachable."""

    uri = "models:/gmtrouter-demo@champion"

    def __init__(self, versions: dict[str, Path], current: str) -> None:
        self.versions = versions
        self.current = current
        self.down = False
        self.resolves = 0

    def point(self, version: str) -> None:
        self.current = version

    def resolve(self) -> ModelRef:
        self.resolves += 1
        if self.down:
            raise ConnectionError("tracking server at http://127.0.0.1:5000 refused the connection")
        return ModelRef(uri=self.uri, version=self.current, location=str(self.versions[self.current]))


def wait_for(predicate, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


# ---------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("reload_models")
    out = {"1": tiny_checkpoint(root / "v1", seed=1), "2": tiny_checkpoint(root / "v2", seed=2)}
    bad = root / "v3-tampered"
    shutil.copytree(out["2"], bad)
    weights = bad / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one flipped byte: the sha256 in config.json no longer matches
    weights.write_bytes(bytes(data))
    out["3"] = bad
    out["4"] = tiny_checkpoint(root / "v4-fewer-llms", seed=4, llms=["alpha", "beta"])
    out["5"] = tiny_checkpoint(root / "v5", seed=5)
    return out


class Stack:
    def __init__(self, registry: FakeRegistry, reloader: ModelReloader, client: httpx.Client, log: Path,
                 builds: list[str]) -> None:
        self.registry, self.reloader, self.client, self.log, self.builds = registry, reloader, client, log, builds

    def reload(self, token: str | None = ADMIN) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return self.client.post("/admin/reload", headers=headers)

    def version(self) -> str:
        return self.client.get("/v1/models").json()["serving"]["version"]


@pytest.fixture
def stack(models, tmp_path):
    registry = FakeRegistry(models, "1")
    log = tmp_path / "feedback.sqlite"
    builds: list[str] = []
    width = {"5": DIM + 3}  # version 5 comes with an encoder of the wrong width

    def build(ref: ModelRef, current: Any) -> GMTRouter:
        builds.append(ref.version)
        return tiny_router(Path(ref.location), log, HashEncoder(width.get(ref.version, DIM)))

    ref = registry.resolve()
    holder = RouterHolder(build(ref, None), {"uri": ref.uri, "version": ref.version})
    reloader = ModelReloader(holder, registry.resolve, build)
    app = create_app(reloader=reloader, admin_token=ADMIN)
    with ServerThread(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        yield Stack(registry, reloader, client, log, builds)


# ---------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------
def test_serving_version_in_health_and_models(stack):
    assert stack.client.get("/health").json() == {"status": "ok"}  # public: the status only
    h = stack.client.get("/health", headers={"Authorization": f"Bearer {ADMIN}"}).json()  # details: admin
    assert h["model"]["uri"] == FakeRegistry.uri and h["model"]["version"] == "1"
    assert h["model"]["reload"]["interval_s"] == 0.0 and h["checks"]["reload"]["status"] == "ok"
    m = stack.client.get("/v1/models").json()
    assert m["serving"]["version"] == "1" and m["serving"]["uri"] == FakeRegistry.uri
    router_obj = stack.client.get("/v1/models/router").json()
    assert router_obj["model_version"] == "1" and router_obj["model_uri"] == FakeRegistry.uri


def test_admin_reload_needs_the_admin_token(stack, models):
    stack.registry.point("2")
    for token in (None, "wrong-token-xyz", f"{ADMIN}x"):
        r = stack.reload(token)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert stack.version() == "1" and stack.builds == ["1"]  # nothing was built
    # without an admin token configured the endpoint is off
    holder = RouterHolder(tiny_router(models["1"]), {"version": "1"})
    app = create_app(reloader=ModelReloader(holder, stack.registry.resolve, lambda ref, cur: None))
    with ServerThread(app) as srv:
        r = httpx.post(srv.url + "/admin/reload", headers={"Authorization": f"Bearer {ADMIN}"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "admin_disabled"


def test_reload_swaps_to_the_new_version(stack, models):
    q = {"query_text": "How do I sort a list in Python?", "user_id": "u1"}
    before = stack.client.post("/v1/route", json=q).json()
    assert before == tiny_router(models["1"]).route_single(dict(q))
    assert stack.reload().json()["status"] == "unchanged" and stack.builds == ["1"]
    stack.registry.point("2")
    r = stack.reload()
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "reloaded", "version": "2", "uri": FakeRegistry.uri, "previous": "1"}
    assert stack.version() == "2"
    after = stack.client.post("/v1/route", json=q).json()
    assert after == tiny_router(models["2"]).route_single(dict(q))  # the new model routes now
    assert after["scores"] != before["scores"]
    metrics = stack.client.get("/metrics").text
    assert 'gmtrouter_model_reloads_total{outcome="reloaded"} 1' in metrics
    assert 'version="2"} 1' in metrics


@pytest.mark.parametrize("version, reason", [
    ("3", "model.safetensors"),   # tampered weights: CheckpointError names the file
    ("4", "gamma"),               # the new model lacks an LLM this server routes to
    ("5", "width"),               # encoder width != the model's
])
def test_a_bad_new_model_is_refused_and_the_current_one_keeps_serving(stack, version, reason, caplog):
    q = {"query_text": "Write a haiku about rain.", "user_id": "u2"}
    before = stack.client.post("/v1/route", json=q).json()
    stack.registry.point(version)
    with caplog.at_level(logging.INFO, logger="gmt_model.serving.server"):
        r = stack.reload()
    assert r.status_code == 409, r.text
    out = r.json()
    assert out["status"] == "refused" and out["version"] == "1" and out["candidate"] == version
    assert reason in out["error"]
    assert any("refused" in rec.getMessage() and reason in rec.getMessage() for rec in caplog.records)
    assert stack.version() == "1"
    assert stack.client.post("/v1/route", json=q).json() == before
    # the poller does not rebuild a refused version; an explicit reload tries again, a good one is taken
    n_builds = len(stack.builds)
    assert stack.reloader.reload(retry_refused=False)["status"] == "refused" and len(stack.builds) == n_builds
    stack.registry.point("2")
    assert stack.reload().json()["status"] == "reloaded" and stack.version() == "2"


def test_registry_down_keeps_serving_and_retries(stack, caplog):
    stack.registry.point("2")
    stack.registry.down = True
    with caplog.at_level(logging.WARNING, logger="gmt_model.serving.server"):
        r = stack.reload()
    assert r.status_code == 503 and r.json()["status"] == "unavailable"
    assert "refused the connection" in r.json()["error"]
    assert any("keeps serving" in rec.getMessage() for rec in caplog.records)
    assert stack.version() == "1"
    assert stack.client.post("/v1/route", json={"query_text": "hi", "user_id": "u1"}).status_code == 200
    stack.registry.down = False
    assert stack.reload().json()["status"] == "reloaded" and stack.version() == "2"


def test_polling_notices_the_moved_alias(models, tmp_path):
    registry = FakeRegistry(models, "1")
    holder = RouterHolder(tiny_router(models["1"]), {"uri": registry.uri, "version": "1"})
    reloader = ModelReloader(holder, registry.resolve, lambda ref, cur: tiny_router(Path(ref.location)),
                             interval=0.02)
    with ServerThread(create_app(reloader=reloader)) as srv, httpx.Client(base_url=srv.url) as client:
        wait_for(lambda: registry.resolves >= 2, "the poller to check")
        assert client.get("/v1/models").json()["serving"]["version"] == "1"
        registry.down = True  # a check fails: nothing changes, polling goes on
        n = registry.resolves
        wait_for(lambda: registry.resolves > n + 1, "the poller to retry")
        registry.down = False
        registry.point("2")
        wait_for(lambda: client.get("/v1/models").json()["serving"]["version"] == "2", "the new version to serve")
        assert client.get("/v1/models").json()["serving"]["reload"]["polling"] is True
    assert reloader._thread is None  # the app's shutdown stopped the poller


def test_checkpoint_folder_source_sees_a_replaced_folder(models, tmp_path):
    """``gmtrouter serve --model <folder> --reload-interval S``: a retrained model written over the folder
    (save_checkpoint replaces it atomically) is a new version."""
    folder = tmp_path / "best"
    shutil.copytree(models["1"], folder)
    resolve = checkpoint_source(folder)
    ref = resolve()
    assert ref.uri == str(folder) and ref.version.startswith("sha256:") and resolve() == ref
    holder = RouterHolder(tiny_router(folder), {"uri": ref.uri, "version": ref.version})
    reloader = ModelReloader(holder, resolve, lambda r, cur: tiny_router(Path(r.location)), interval=0.02)
    q = {"query_text": "Plan a trip to Kyoto.", "user_id": "u1"}
    with ServerThread(create_app(reloader=reloader)) as srv, httpx.Client(base_url=srv.url) as client:
        tiny_checkpoint(folder, seed=2)
        wait_for(lambda: client.get("/v1/models").json()["serving"]["version"] != ref.version, "the replaced folder")
        assert client.post("/v1/route", json=q).json() == tiny_router(models["2"]).route_single(dict(q))


class GatedRouter:
    """A minimal router whose route_single waits for ``gate`` (a request in flight)."""

    rating_scale = (1.0, 5.0)

    def __init__(self, name: str) -> None:
        self.name = name
        self.candidates = ["alpha", "beta"]
        self.gate = threading.Event()
        self.entered = threading.Event()

    def route_single(self, query: dict[str, Any]) -> dict[str, Any]:
        self.entered.set()
        assert self.gate.wait(20)
        return {"model_name": "alpha", "confidence": 1.0, "scores": {"alpha": 1.0, "beta": 0.0},
                "reasoning": f"routed by {self.name}"}

    def update_user_feedback(self, *a: Any, **kw: Any) -> dict[str, Any]:
        return {}


def test_in_flight_requests_finish_on_the_old_router():
    old, new = GatedRouter("old"), GatedRouter("new")
    new.gate.set()
    target = {"version": "1"}
    holder = RouterHolder(old, {"version": "1"})
    reloader = ModelReloader(holder, lambda: ModelRef("src", target["version"], "loc"), lambda ref, cur: new,
                             check=None)
    with ServerThread(create_app(reloader=reloader, admin_token=ADMIN)) as srv:
        result: dict[str, Any] = {}

        def slow_request() -> None:
            result["r"] = httpx.post(srv.url + "/v1/route", json={"query_text": "q", "user_id": "u"}, timeout=30)

        t = threading.Thread(target=slow_request)
        t.start()
        assert old.entered.wait(20)  # the request is inside the old router
        target["version"] = "2"
        r = httpx.post(srv.url + "/admin/reload", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30)
        assert r.json()["status"] == "reloaded"  # the swap did not wait for the request in flight
        fresh = httpx.post(srv.url + "/v1/route", json={"query_text": "q", "user_id": "u"}, timeout=30)
        assert fresh.json()["reasoning"] == "routed by new"
        old.gate.set()
        t.join(20)
        assert result["r"].status_code == 200 and result["r"].json()["reasoning"] == "routed by old"


def test_feedback_is_replayed_by_the_new_router(stack):
    """Feedback given to version 1 reaches the log; version 2 (trained before it) replays it on build, and
    feedback arriving after the swap goes to version 2."""
    user = "new-user-7"
    fb = {"user": user, "query": "Explain recursion.", "model": "beta", "rating": 5.0}
    r = stack.client.post("/v1/feedback", json=fb)
    assert r.status_code == 200, r.text
    assert r.json()["feedback_id"] == FeedbackLog(stack.log).max_id()
    q = {"query_text": "Explain recursion.", "user_id": user}
    assert stack.client.post("/v1/route", json=q).json()["history_size"] == 1
    stack.registry.point("2")
    assert stack.reload().json()["status"] == "reloaded"
    assert stack.client.post("/v1/route", json=q).json()["history_size"] == 1  # replayed from the log
    assert stack.client.post("/v1/feedback", json={**fb, "model": "alpha", "rating": 1.0}).status_code == 200
    assert stack.client.post("/v1/route", json=q).json()["history_size"] == 2
    assert FeedbackLog(stack.log).count() == 2


def test_reloader_rejects_a_bad_interval(models):
    holder = RouterHolder(tiny_router(models["1"]))
    with pytest.raises(ServerConfigError, match="reload interval"):
        ModelReloader(holder, lambda: None, lambda ref, cur: None, interval=-1)  # type: ignore[arg-type]


class LoggingRouter(GatedRouter):
    """Feedback goes to a shared list (the 'log'); sync_feedback reads what others appended."""

    def __init__(self, name: str, log: list[str]) -> None:
        super().__init__(name)
        self.feedback_log = log
        self.seen: list[str] = []

    def update_user_feedback(self, user_id: str, query: str, model: str, rating: float,
                             session_id: str | None = None) -> dict[str, Any]:
        self.entered.set()
        assert self.gate.wait(20)
        self.feedback_log.append(query)
        self.seen.append(query)
        return {"feedback_id": len(self.feedback_log)}

    def sync_feedback(self) -> int:
        new = [q for q in self.feedback_log if q not in self.seen]
        self.seen += new
        return len(new)


def test_feedback_stored_by_a_request_in_flight_reaches_the_new_router():
    log: list[str] = []
    old, new = LoggingRouter("old", log), LoggingRouter("new", log)
    new.gate.set()
    target = {"version": "1"}
    holder = RouterHolder(old, {"version": "1"})
    reloader = ModelReloader(holder, lambda: ModelRef("src", target["version"], "loc"), lambda ref, cur: new,
                             check=None)
    fb = {"user": "u", "query": "in flight", "model": "alpha", "rating": 4.0}
    with ServerThread(create_app(reloader=reloader, admin_token=ADMIN)) as srv:
        result: dict[str, Any] = {}
        t = threading.Thread(target=lambda: result.update(r=httpx.post(srv.url + "/v1/feedback", json=fb,
                                                                       timeout=30)))
        t.start()
        assert old.entered.wait(20)
        target["version"] = "2"
        assert httpx.post(srv.url + "/admin/reload", headers={"Authorization": f"Bearer {ADMIN}"},
                          timeout=30).json()["status"] == "reloaded"
        assert new.seen == []  # built and swapped before the old router stored the row
        old.gate.set()
        t.join(20)
        assert result["r"].status_code == 200 and result["r"].json()["feedback_id"] == 1
    assert log == ["in flight"] and new.seen == ["in flight"]  # the new router synced the row
