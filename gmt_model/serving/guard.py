"""ASGI middleware in front of every request: metrics, access (bearer token, API keys, admin token,
identity header) and the request body limit."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

from starlette.exceptions import HTTPException as StarletteHTTPException

from gmt_model.serving.http_errors import error_json as _error_json
from gmt_model.serving.identity import ApiKeys
from gmt_model.serving.metrics import _Metrics, _path_label

_OPEN_PATHS = frozenset({"/health", "/", "/chat"})
_ADMIN_PREFIX = "/admin/"
IDENTITY_SCOPE_KEY = "gmtrouter.identity"
_IDENTITY_SCOPE_KEY = IDENTITY_SCOPE_KEY

class _GuardMiddleware:
    def __init__(self, app: Any, *, metrics: _Metrics, auth_token: str | None, max_body_bytes: int,
                 admin_token: str | None = None, api_keys: ApiKeys | None = None,
                 identity_header: str | None = None) -> None:
        self.app = app
        self.metrics = metrics
        self.token = auth_token.encode() if auth_token else None
        self.admin_token = admin_token.encode() if admin_token else None
        self.api_keys = api_keys
        self.identity_header = identity_header.lower().encode("latin-1") if identity_header else None
        self.max_body = max_body_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = [500]

        async def send_wrapper(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self._guarded(scope, receive, send_wrapper)
        finally:
            self.metrics.request(scope.get("method", "?"), _path_label(scope.get("path", "")), status[0])

    @staticmethod
    async def _reply(send: Callable, status: int, body: bytes, extra: list[tuple[bytes, bytes]] = ()) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers + list(extra)})
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    def _header(scope: dict, name: bytes) -> bytes | None:
        for key, value in scope.get("headers", []):
            if key == name:
                return value
        return None

    def _bearer(self, scope: dict) -> bytes | None:
        value = self._header(scope, b"authorization")
        if value is None:
            return None
        scheme, _, given = value.partition(b" ")
        given = given.strip()
        return given if scheme.lower() == b"bearer" and given else None

    def _access(self, scope: dict) -> tuple[int, str, str] | None:
        """None when the request may go on (identity put into the scope), else (status, message, code)."""
        path = scope.get("path", "")
        if path.startswith(_ADMIN_PREFIX):
            if self.admin_token is None:
                return 403, "the admin API is disabled (set GMTROUTER_ADMIN_TOKEN when starting the server)", \
                    "admin_disabled"
            given = self._bearer(scope)
            if given is None or not hmac.compare_digest(given, self.admin_token):
                return 401, "missing or invalid admin token (send 'Authorization: Bearer <admin token>')", \
                    "invalid_token"
            return None
        if path in _OPEN_PATHS or path.startswith("/static/"):
            return None
        given = self._bearer(scope)
        identity = None
        authenticated = self.token is None and self.api_keys is None
        if given is not None and self.api_keys is not None:
            identity = self.api_keys.lookup(given)
            authenticated = identity is not None
        if not authenticated and given is not None and self.token is not None:
            authenticated = hmac.compare_digest(given, self.token)
        if not authenticated:
            what = "API key" if self.api_keys is not None else "bearer token"
            return 401, f"missing or invalid {what} (send 'Authorization: Bearer <{what.split()[-1]}>')", \
                "invalid_token"
        if self.identity_header is not None:
            raw = self._header(scope, self.identity_header)
            if raw is not None and raw.strip():
                proxied = raw.decode("utf-8", "replace").strip()
                if identity is not None and proxied != identity:
                    return 403, "the identity header and the API key name different users", "identity_conflict"
                identity = proxied
        scope[_IDENTITY_SCOPE_KEY] = identity
        return None

    async def _guarded(self, scope: dict, receive: Callable, send: Callable) -> None:
        denied = self._access(scope)
        if denied is not None:
            status, message, code = denied
            kind = "authentication_error" if status == 401 else "permission_error"
            extra = [(b"www-authenticate", b"Bearer")] if status == 401 else []
            await self._reply(send, status, _error_json(status, message, kind, code), extra)
            return
        declared = None
        value = self._header(scope, b"content-length")
        if value is not None:
            try:
                declared = int(value)
            except ValueError:
                await self._reply(send, 400, _error_json(400, "invalid Content-Length header", "invalid_request_error"))
                return
        too_large = f"request body exceeds the limit of {self.max_body} bytes"
        if declared is not None and declared > self.max_body:
            await self._reply(send, 413, _error_json(413, too_large, "invalid_request_error", "request_too_large"))
            return
        received = [0]
        limit = self.max_body

        async def limited_receive() -> dict:
            message = await receive()
            if message["type"] == "http.request":
                received[0] += len(message.get("body", b""))
                if received[0] > limit:
                    raise StarletteHTTPException(413, detail=too_large)
            return message

        await self.app(scope, limited_receive, send)


