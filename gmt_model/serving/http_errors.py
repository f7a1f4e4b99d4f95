"""HTTP errors of the server: :class:`ApiError` (answered as OpenAI-style JSON) and the helpers that build them."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from fastapi.responses import JSONResponse

from gmt_model.errors import RoutingError

__all__ = ["ApiError", "ServerConfigError", "NO_RETRY", "error_json", "routing_api_error"]

#: OpenAI clients obey this (non-standard) header: a configuration problem is not worth a retry
NO_RETRY = {"x-should-retry": "false"}


class ServerConfigError(ValueError):
    """A server setting (API keys file, identity header) is malformed."""


class ApiError(Exception):
    """An error answered as OpenAI-style JSON with ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.extra = extra or {}
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        err: dict[str, Any] = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        err.update(self.extra)
        return JSONResponse({"error": err}, status_code=self.status, headers=self.headers or None)


def error_json(status: int, message: str, type: str, code: str | None = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": type, "param": None, "code": code}}).encode()


def routing_api_error(exc: RoutingError, names: Mapping[str, str] | None = None) -> ApiError:
    """A 400 for a RoutingError; its field is renamed to what the client sent (``user_id`` -> ``user``)."""
    names = names or {}
    field = getattr(exc, "field", None)
    message = str(exc)
    param = None
    if field:
        param = names.get(field, field)
        if param != field:
            message = message.replace(f"field '{field}'", f"field '{param}'")
    return ApiError(400, f"routing error: {message}", param=param, code="routing_error")



_error_json = error_json
_routing_api_error = routing_api_error
