"""Prometheus metrics of the server (counters and a latency histogram, rendered as text)."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

_KNOWN_PATHS = frozenset(
    {"/", "/chat", "/health", "/metrics", "/v1/models", "/v1/route", "/v1/feedback", "/v1/chat/completions",
     "/admin/reload"}
)

def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class _Metrics:
    BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = {}
        self.latency: dict[str, list[float]] = {}  # kind -> bucket counts (+Inf last)
        self.latency_sum: dict[str, float] = {}
        self.latency_count: dict[str, int] = {}
        self.routed: dict[str, int] = {}
        self.upstream_errors: dict[str, int] = {}
        self.feedback = 0
        self.shed: dict[str, int] = {}  # requests answered 503 by the server's limits, by reason

    def request(self, method: str, path: str, status: int) -> None:
        with self._lock:
            key = (method, path, status)
            self.requests[key] = self.requests.get(key, 0) + 1

    def routing(self, kind: str, seconds: float) -> None:
        with self._lock:
            counts = self.latency.setdefault(kind, [0.0] * (len(self.BUCKETS) + 1))
            for i, b in enumerate(self.BUCKETS):
                if seconds <= b:
                    counts[i] += 1
            counts[-1] += 1
            self.latency_sum[kind] = self.latency_sum.get(kind, 0.0) + seconds
            self.latency_count[kind] = self.latency_count.get(kind, 0) + 1

    def bump(self, table: dict[str, int], key: str) -> None:
        with self._lock:
            table[key] = table.get(key, 0) + 1

    def add_feedback(self) -> None:
        with self._lock:
            self.feedback += 1

    def render(self, reloads: Mapping[str, int] | None = None, serving: Mapping[str, Any] | None = None) -> str:
        with self._lock:
            out = [
                "# HELP gmtrouter_requests_total HTTP requests by method, path and status.",
                "# TYPE gmtrouter_requests_total counter",
            ]
            for (m, p, s), n in sorted(self.requests.items()):
                out.append(f'gmtrouter_requests_total{{method="{_esc(m)}",path="{_esc(p)}",status="{s}"}} {n}')
            out += [
                "# HELP gmtrouter_routing_latency_seconds Time spent in the router per call.",
                "# TYPE gmtrouter_routing_latency_seconds histogram",
            ]
            for kind in sorted(self.latency):
                counts = self.latency[kind]
                for b, c in zip(self.BUCKETS, counts):
                    out.append(f'gmtrouter_routing_latency_seconds_bucket{{kind="{kind}",le="{b}"}} {int(c)}')
                out.append(f'gmtrouter_routing_latency_seconds_bucket{{kind="{kind}",le="+Inf"}} {int(counts[-1])}')
                out.append(f'gmtrouter_routing_latency_seconds_sum{{kind="{kind}"}} {self.latency_sum[kind]:.9f}')
                out.append(f'gmtrouter_routing_latency_seconds_count{{kind="{kind}"}} {self.latency_count[kind]}')
            out += [
                "# HELP gmtrouter_routed_total Chat completions sent to each LLM.",
                "# TYPE gmtrouter_routed_total counter",
            ]
            for model, n in sorted(self.routed.items()):
                out.append(f'gmtrouter_routed_total{{model="{_esc(model)}"}} {n}')
            out += [
                "# HELP gmtrouter_upstream_errors_total Failed upstream calls per LLM.",
                "# TYPE gmtrouter_upstream_errors_total counter",
            ]
            for model, n in sorted(self.upstream_errors.items()):
                out.append(f'gmtrouter_upstream_errors_total{{model="{_esc(model)}"}} {n}')
            out += [
                "# HELP gmtrouter_shed_total Requests refused with 503 by the server's limits, by reason.",
                "# TYPE gmtrouter_shed_total counter",
            ]
            for reason, n in sorted(self.shed.items()):
                out.append(f'gmtrouter_shed_total{{reason="{_esc(reason)}"}} {n}')
            out += [
                "# HELP gmtrouter_feedback_total Feedback events accepted.",
                "# TYPE gmtrouter_feedback_total counter",
                f"gmtrouter_feedback_total {self.feedback}",
            ]
            if reloads is not None:
                out += [
                    "# HELP gmtrouter_model_reloads_total Model reload checks by outcome.",
                    "# TYPE gmtrouter_model_reloads_total counter",
                ]
                for outcome, n in sorted(reloads.items()):
                    out.append(f'gmtrouter_model_reloads_total{{outcome="{_esc(outcome)}"}} {n}')
            if serving is not None:
                out += [
                    "# HELP gmtrouter_model_info The model being served (value 1).",
                    "# TYPE gmtrouter_model_info gauge",
                    f'gmtrouter_model_info{{uri="{_esc(str(serving.get("uri")))}",'
                    f'version="{_esc(str(serving.get("version")))}"}} 1',
                ]
            return "\n".join(out) + "\n"


def _path_label(path: str) -> str:
    if path in _KNOWN_PATHS:
        return path
    if path.startswith("/static/"):
        return "/static"
    return "other"


