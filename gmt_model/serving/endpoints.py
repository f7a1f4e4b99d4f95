"""OpenAI-compatible LLM endpoints the router forwards to.

Configuration is a YAML-style mapping ``{llm_name: {base_url, model,
api_key_env, timeout?, extra_headers?}}``: ``llm_name`` is the router's
candidate name, ``model`` the name the upstream API knows the model by
(defaults to ``llm_name``), and ``api_key_env`` the *name* of the environment
variable holding the API key.  Keys are read from the environment at call
time and never stored, logged or shown in ``repr``.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

__all__ = [
    "Endpoint",
    "EndpointConfigError",
    "MissingAPIKeyError",
    "UpstreamError",
    "load_endpoints",
    "chat_completion",
    "redact",
]

_ALLOWED_KEYS = frozenset({"base_url", "model", "api_key_env", "timeout", "extra_headers"})


class EndpointConfigError(ValueError):
    """An endpoint configuration entry is malformed (message names the entry and field)."""


class MissingAPIKeyError(RuntimeError):
    """The environment variable named by ``api_key_env`` is not set (the message names the variable only)."""


class UpstreamError(RuntimeError):
    """The upstream API answered with an error status or an unreadable body."""

    def __init__(self, endpoint: str, status_code: int | None, message: str) -> None:
        super().__init__(message)
        self.endpoint = endpoint
        self.status_code = status_code


def redact(text: str, secrets: list[str | None]) -> str:
    """Replace every occurrence of each non-empty secret in ``text`` by ``***``."""
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    return text


@dataclass
class Endpoint:
    """One OpenAI-compatible chat-completions endpoint for one router candidate."""

    name: str
    base_url: str
    model: str
    api_key_env: str | None = None
    timeout: float = 60.0
    extra_headers: dict[str, str] | None = field(default=None)

    def __post_init__(self) -> None:
        where = f"endpoint {self.name!r}"
        if not isinstance(self.name, str) or not self.name.strip():
            raise EndpointConfigError(f"endpoint name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.base_url, str) or not self.base_url.startswith(("http://", "https://")):
            raise EndpointConfigError(f"{where}: field 'base_url' must be an http:// or https:// URL, got {self.base_url!r}")
        if not isinstance(self.model, str) or not self.model.strip():
            raise EndpointConfigError(f"{where}: field 'model' must be a non-empty string, got {self.model!r}")
        if self.api_key_env is not None and (not isinstance(self.api_key_env, str) or not self.api_key_env.strip()):
            raise EndpointConfigError(
                f"{where}: field 'api_key_env' must be the name of an environment variable, got {self.api_key_env!r}"
            )
        if isinstance(self.timeout, bool) or not isinstance(self.timeout, numbers.Real) or not (
            math.isfinite(float(self.timeout)) and float(self.timeout) > 0
        ):
            raise EndpointConfigError(f"{where}: field 'timeout' must be a positive number of seconds, got {self.timeout!r}")
        self.timeout = float(self.timeout)
        if self.extra_headers is not None:
            if not isinstance(self.extra_headers, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in self.extra_headers.items()
            ):
                raise EndpointConfigError(f"{where}: field 'extra_headers' must map header names to string values")
            if any(k.lower() == "authorization" for k in self.extra_headers):
                raise EndpointConfigError(
                    f"{where}: field 'extra_headers' must not set Authorization; use 'api_key_env'"
                )
            self.extra_headers = dict(self.extra_headers)

    @property
    def url(self) -> str:
        """The chat-completions URL: ``base_url + "/chat/completions"``."""
        return self.base_url.rstrip("/") + "/chat/completions"

    def api_key(self) -> str | None:
        """The API key from ``api_key_env`` (None when no variable is configured).

        Raises ``MissingAPIKeyError`` (naming the variable, never a value) when the
        variable is configured but unset or empty.
        """
        if self.api_key_env is None:
            return None
        value = os.environ.get(self.api_key_env)
        if not value:
            raise MissingAPIKeyError(
                f"environment variable {self.api_key_env!r} (API key for model {self.name!r}) is not set"
            )
        return value

    def headers(self) -> dict[str, str]:
        """Request headers for the upstream: JSON content type, extra headers, bearer key."""
        out = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.extra_headers:
            out.update(self.extra_headers)
        key = self.api_key()
        if key is not None:
            out["Authorization"] = f"Bearer {key}"
        return out

    def __repr__(self) -> str:  # never shows a key; header values may be secrets too
        hdrs = sorted(self.extra_headers) if self.extra_headers else None
        return (
            f"Endpoint(name={self.name!r}, base_url={self.base_url!r}, model={self.model!r}, "
            f"api_key_env={self.api_key_env!r}, timeout={self.timeout!r}, extra_headers={hdrs!r})"
        )

    __str__ = __repr__


def load_endpoints(mapping: Mapping[str, Any] | None) -> dict[str, Endpoint]:
    """Build endpoints from ``{llm_name: {base_url, model?, api_key_env?, timeout?, extra_headers?}}``.

    ``model`` defaults to ``llm_name``.  Raises ``EndpointConfigError`` naming the
    entry and the field on any problem (unknown keys included).
    """
    if mapping is None:
        return {}
    if not isinstance(mapping, Mapping):
        raise EndpointConfigError(f"endpoints must be a mapping of LLM name -> settings, got {type(mapping).__name__}")
    out: dict[str, Endpoint] = {}
    for name, spec in mapping.items():
        if not isinstance(name, str) or not name.strip():
            raise EndpointConfigError(f"endpoints: LLM name must be a non-empty string, got {name!r}")
        if not isinstance(spec, Mapping):
            raise EndpointConfigError(
                f"endpoints.{name}: expected a mapping with base_url/model/api_key_env, got {type(spec).__name__}"
            )
        unknown = sorted(set(map(str, spec)) - _ALLOWED_KEYS)
        if unknown:
            raise EndpointConfigError(
                f"endpoints.{name}: unknown field(s) {unknown}; allowed: {sorted(_ALLOWED_KEYS)}"
            )
        if "base_url" not in spec:
            raise EndpointConfigError(f"endpoints.{name}: field 'base_url' is required")
        out[name] = Endpoint(
            name=name,
            base_url=spec["base_url"],
            model=spec.get("model", name),
            api_key_env=spec.get("api_key_env"),
            timeout=spec.get("timeout", 60.0),
            extra_headers=spec.get("extra_headers"),
        )
    return out


def _check_messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list of {'role', 'content'} objects")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not m["role"]:
            raise ValueError(f"messages[{i}] must be an object with a non-empty string 'role'")
    return messages


def _iter_sse(resp: httpx.Response) -> Iterator[dict[str, Any]]:
    for line in resp.iter_lines():
        if not line.startswith("data:"):
            continue
        data = line[len("data:"):].strip()
        if data == "[DONE]":
            return
        if data:
            yield json.loads(data)


def chat_completion(
    endpoint: Endpoint,
    messages: list[dict[str, Any]],
    *,
    stream: bool = False,
    client: httpx.Client | None = None,
    **params: Any,
) -> dict[str, Any] | Iterator[dict[str, Any]]:
    """Call ``endpoint`` synchronously.

    ``stream=False`` returns the parsed JSON completion.  ``stream=True`` returns
    an iterator over the parsed SSE chunks (up to ``[DONE]``); the connection
    closes when the iterator is exhausted or closed.  Extra ``params``
    (``temperature``, ``max_tokens``...) go into the request body.  Raises
    ``UpstreamError`` on an error status (the key is redacted from its message)
    and ``MissingAPIKeyError`` when the key variable is unset.
    """
    body = dict(params)
    body["model"] = endpoint.model
    body["messages"] = _check_messages(messages)
    if stream:
        body["stream"] = True
    headers = endpoint.headers()
    key = endpoint.api_key()
    own = client is None
    c = httpx.Client(timeout=endpoint.timeout) if own else client

    def _fail(resp: httpx.Response) -> UpstreamError:
        text = redact(resp.text, [key, *(endpoint.extra_headers or {}).values()])[:500]
        return UpstreamError(
            endpoint.name, resp.status_code, f"upstream for model {endpoint.name!r} returned HTTP {resp.status_code}: {text}"
        )

    if not stream:
        try:
            resp = c.post(endpoint.url, json=body, headers=headers, timeout=endpoint.timeout)
        finally:
            if own:
                c.close()
        if resp.status_code // 100 != 2:
            raise _fail(resp)
        try:
            data = resp.json()
        except json.JSONDecodeError as exc:
            raise UpstreamError(endpoint.name, resp.status_code, f"upstream for model {endpoint.name!r} returned invalid JSON: {exc}") from exc
        return data

    def _gen() -> Iterator[dict[str, Any]]:
        try:
            with c.stream("POST", endpoint.url, json=body, headers=headers, timeout=endpoint.timeout) as resp:
                if resp.status_code // 100 != 2:
                    resp.read()
                    raise _fail(resp)
                yield from _iter_sse(resp)
        finally:
            if own:
                c.close()

    return _gen()
