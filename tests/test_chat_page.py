"""The chat page in a real headless Chromium, against the real app on 127.0.0.1.

Needs Debian ``chromium`` and ``chromium-driver`` (CI installs them) and the
``selenium`` package.  Set ``GMTROUTER_SAVE_SCREENSHOT=1`` to also refresh
``docs/img/chat_page.png``.
"""

from __future__ import annotations

import os
import re
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from gmt_model.serving.endpoints import load_endpoints
from gmt_model.serving.router import RoutingError
from gmt_model.serving.feedback import FeedbackLog
from gmt_model.serving.server import create_app
from servers import ServerThread

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
TOKEN = "page-token-xyz"
ALPHA_KEY = "sk-page-alpha-SECRET"
BETA_KEY = "sk-page-beta-SECRET"
CANDIDATES = ["alpha", "beta", "gamma"]
REPO = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
        reason=f"needs Debian chromium ({CHROMIUM}) and chromium-driver ({CHROMEDRIVER}): "
               "apt-get install -y chromium chromium-driver",
    ),
]


class FakeRouter:
    """Deterministic router: a model the user rated >= 4 wins; 'code' -> beta; else alpha."""

    rating_scale = (1.0, 5.0)

    def __init__(self) -> None:
        self.candidates = list(CANDIDATES)
        self.route_calls: list[dict[str, Any]] = []
        self.feedback_calls: list[dict[str, Any]] = []
        self.preferred: dict[str, str] = {}

    def route_single(self, query: dict[str, Any]) -> dict[str, Any]:
        if not query.get("query_text") or not query.get("user_id"):
            raise RoutingError("query_text and user_id are required")
        self.route_calls.append(dict(query))
        user = query["user_id"]
        words = set(re.findall(r"[a-z]+", query["query_text"].lower()))
        choice = self.preferred.get(user) or ("beta" if "code" in words else "alpha")
        scores = {"alpha": 0.2, "beta": 0.2, "gamma": 0.1}
        scores[choice] = 0.7
        total = sum(scores.values())
        scores = {k: v / total for k, v in scores.items()}
        return {"model_name": choice, "confidence": scores[choice], "user_preference": 0.6, "scores": scores,
                "reasoning": f"rule-based choice for {user}", "cold_start": user not in self.preferred}

    def route_batch(self, queries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [self.route_single(q) for q in queries]

    def update_user_feedback(self, user_id: str, query: str, model: str, rating: float,
                             session_id: str | None = None) -> dict[str, Any]:
        if model not in self.candidates or not 1 <= rating <= 5:
            raise RoutingError(f"bad feedback for {model!r} rating {rating}")
        self.feedback_calls.append({"user_id": user_id, "query": query, "model": model, "rating": rating,
                                    "session_id": session_id})
        if rating >= 4:
            self.preferred[user_id] = model
        return {"user_id": user_id, "model": model, "rating": rating}


def make_upstream() -> FastAPI:
    app = FastAPI()

    @app.post("/{tenant}/v1/chat/completions")
    async def completions(tenant: str, request: Request):
        body = await request.json()
        expected = {"alpha": ALPHA_KEY, "beta": BETA_KEY}[tenant]
        if request.headers.get("authorization") != f"Bearer {expected}":
            return JSONResponse({"error": {"message": "bad key"}}, status_code=401)
        turns = sum(1 for m in body["messages"] if m["role"] == "user")
        question = body["messages"][-1]["content"]
        answer = f"{tenant} answers turn {turns}: {question.upper()}"
        return {"id": "x", "object": "chat.completion", "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}]}

    return app


def make_driver(profile: Path) -> webdriver.Chrome:
    opts = Options()
    opts.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", f"--user-data-dir={profile}", "--window-size=1200,900"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)


def save_png(data: bytes, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def test_chat_page_routes_shows_scores_and_rates(tmp_path, monkeypatch):
    monkeypatch.setenv("GMT_PAGE_ALPHA_KEY", ALPHA_KEY)
    monkeypatch.setenv("GMT_PAGE_BETA_KEY", BETA_KEY)
    router = FakeRouter()
    with ServerThread(make_upstream()) as up:
        endpoints = load_endpoints({
            "alpha": {"base_url": f"{up.url}/alpha/v1", "model": "alpha-up", "api_key_env": "GMT_PAGE_ALPHA_KEY"},
            "beta": {"base_url": f"{up.url}/beta/v1", "model": "beta-up", "api_key_env": "GMT_PAGE_BETA_KEY"},
        })
        app = create_app(router, endpoints=endpoints, auth_token=TOKEN,
                         feedback_log=FeedbackLog(tmp_path / "feedback.sqlite"))  # feedback needs a log
        with ServerThread(app) as srv:
            driver = make_driver(tmp_path / "chrome-profile")
            try:
                _drive(driver, srv.url, router, tmp_path)
            finally:
                driver.quit()


def _drive(driver: webdriver.Chrome, url: str, router: FakeRouter, tmp_path: Path) -> None:
    wait = WebDriverWait(driver, 15)
    find = driver.find_element
    driver.get(url + "/chat")
    # the server wants a token: the page says so and marks the field
    wait.until(lambda d: "access token" in find(By.ID, "status").text.lower())
    assert "needs-attention" in find(By.ID, "token").get_attribute("class")

    find(By.ID, "token").send_keys(TOKEN)
    find(By.ID, "user-id").click()  # leaving the token field stores it and reloads the model list
    wait.until(lambda d: len(find(By.ID, "model-select").find_elements(By.TAG_NAME, "option")) == 1 + len(CANDIDATES))
    assert driver.execute_script("return localStorage.getItem('gmtrouter.token')") == TOKEN
    assert find(By.ID, "model-select").get_attribute("value") == "router"

    find(By.ID, "user-id").send_keys("alice")
    box = find(By.ID, "message")
    box.send_keys("please review my code")
    find(By.ID, "send").click()

    def answers() -> list:
        return driver.find_elements(By.CSS_SELECTOR, ".msg.assistant")

    wait.until(lambda d: len(answers()) == 1)
    first = answers()[0]
    assert first.find_element(By.CSS_SELECTOR, ".answer-text").text == "beta answers turn 1: PLEASE REVIEW MY CODE"
    assert first.find_element(By.CSS_SELECTOR, ".routed-model").text == "beta"
    rows = first.find_elements(By.CSS_SELECTOR, ".score-row")
    assert [r.get_attribute("data-model") for r in rows] == ["beta", "alpha", "gamma"]  # sorted by score
    assert "chosen" in rows[0].get_attribute("class")
    assert float(rows[0].get_attribute("data-score")) == pytest.approx(0.7 / 1.0)
    widths = [r.find_element(By.CSS_SELECTOR, ".bar > span").size["width"] for r in rows]
    assert widths[0] > widths[1] > widths[2] > 0
    assert "rule-based choice for alice" in first.text
    assert router.route_calls[-1]["user_id"] == "alice" and router.route_calls[-1]["turn"] == 1
    session = router.route_calls[-1]["session_id"]
    assert session.startswith("chat-") and find(By.ID, "session-id").text == session

    # second turn in the same session: the page sends the whole conversation
    box.send_keys("now write a poem", Keys.ENTER)
    wait.until(lambda d: len(answers()) == 2)
    second = answers()[1]
    assert second.find_element(By.CSS_SELECTOR, ".answer-text").text == "alpha answers turn 2: NOW WRITE A POEM"
    assert second.find_element(By.CSS_SELECTOR, ".routed-model").text == "alpha"
    assert router.route_calls[-1]["turn"] == 2
    assert router.route_calls[-1]["conversation_history"] == ["please review my code"]
    assert router.route_calls[-1]["session_id"] == session

    # rate the second answer 4 stars: the feedback reaches the router
    second.find_element(By.CSS_SELECTOR, '.star[data-value="4"]').click()
    wait.until(lambda d: "rated 4/5" in second.find_element(By.CSS_SELECTOR, ".rating-status").text)
    assert router.feedback_calls == [{"user_id": "alice", "query": "now write a poem", "model": "alpha",
                                      "rating": 4, "session_id": session}]
    lit = second.find_elements(By.CSS_SELECTOR, ".star.on")
    assert len(lit) == 4

    # the rating changed this user's routing at once: code now goes to alpha too
    box.send_keys("more code please", Keys.ENTER)
    wait.until(lambda d: len(answers()) == 3)
    assert answers()[2].find_element(By.CSS_SELECTOR, ".routed-model").text == "alpha"

    # no script errors, no CSP violations (the expected 401 from the first model list aside)
    logs = [e for e in driver.get_log("browser") if e["level"] == "SEVERE" and "401" not in e["message"]]
    assert logs == []

    png = driver.get_screenshot_as_png()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    save_png(png, tmp_path / "chat_page.png")
    if os.environ.get("GMTROUTER_SAVE_SCREENSHOT") == "1":
        save_png(png, REPO / "docs" / "img" / "chat_page.png")


def test_offline_chat_routes_rates_and_the_next_route_changes(tmp_path):
    """No LLM endpoints (the offline demo): the page switches to route-only mode by itself, shows the
    routing decision (model, scores, reasoning), lets the user rate the choice, and routing the same
    message again after a low rating picks another model (before the rating it does not).  A real
    GMTRouter (tiny checkpoint, deterministic hash encoder) with a durable feedback log."""
    from gmt_model.serving.feedback import FeedbackLog
    from test_server_reload import tiny_checkpoint, tiny_router

    router = tiny_router(tiny_checkpoint(tmp_path / "ckpt", seed=3), tmp_path / "feedback.sqlite")
    app = create_app(router, endpoints=load_endpoints({}))
    with ServerThread(app) as srv:
        driver = make_driver(tmp_path / "chrome-profile")
        try:
            wait = WebDriverWait(driver, 20)
            find = driver.find_element
            driver.get(srv.url + "/chat")
            wait.until(lambda d: "route-only mode" in find(By.ID, "status").text)
            assert find(By.ID, "route-only").is_selected()
            assert "user_0001" in find(By.ID, "user-id").get_attribute("placeholder")
            find(By.ID, "user-id").send_keys("user_0001")
            find(By.ID, "message").send_keys("write a poem about the sea", Keys.ENTER)

            def cards() -> list:
                return driver.find_elements(By.CSS_SELECTOR, ".msg.assistant.route-card")

            wait.until(lambda d: len(cards()) == 1)
            first = cards()[0]
            chosen = first.find_element(By.CSS_SELECTOR, ".routed-model").text
            assert chosen in router.candidates and "routed to" in first.text
            rows = first.find_elements(By.CSS_SELECTOR, ".score-row")
            assert sorted(r.get_attribute("data-model") for r in rows) == sorted(router.candidates)
            assert first.find_element(By.CSS_SELECTOR, ".reasoning").text  # the router's reasoning
            assert "Rate this choice" in first.text
            # routing the same message again without a rating: the same choice, nothing "changed"
            first.find_element(By.CSS_SELECTOR, ".route-again").click()
            wait.until(lambda d: len(cards()) == 2)
            assert cards()[1].find_element(By.CSS_SELECTOR, ".routed-model").text == chosen
            assert not cards()[1].find_elements(By.CSS_SELECTOR, ".badge.changed")
            # rate the choice 1 star: stored in the durable log ...
            first.find_element(By.CSS_SELECTOR, '.star[data-value="1"]').click()
            wait.until(lambda d: "rated 1/5" in first.find_element(By.CSS_SELECTOR, ".rating-status").text)
            rows_logged = FeedbackLog(tmp_path / "feedback.sqlite").read()
            assert [(r.user_id, r.model, r.rating, r.turn) for r in rows_logged] == [("user_0001", chosen, 1.0, 1)]
            # ... and the next route of the same message picks another model, and says so
            first.find_element(By.CSS_SELECTOR, ".route-again").click()
            wait.until(lambda d: len(cards()) == 3)
            third = cards()[2]
            now = third.find_element(By.CSS_SELECTOR, ".routed-model").text
            assert now != chosen and now in router.candidates
            assert f"was {chosen}" in third.find_element(By.CSS_SELECTOR, ".badge.changed").text
            logs = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
            assert logs == []
        finally:
            driver.quit()
