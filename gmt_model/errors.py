"""Exceptions shared by light modules (server, CLI) without importing torch."""

from __future__ import annotations

import re
import sys

__all__ = ["RoutingError", "DeviceError", "readable_error_types", "one_line"]

_FIELD_RE = re.compile(r"field '([^']+)'")


class RoutingError(ValueError):
    """Bad routing or feedback input; nothing was stored.

    ``field`` names the offending input field (``user_id``, ``rating``...):
    given explicitly, or read from a message of the form ``field 'x': ...``;
    None when the message names no field.
    """

    def __init__(self, message: str = "", *, field: str | None = None) -> None:
        super().__init__(message)
        if field is None:
            m = _FIELD_RE.search(str(message))
            field = m.group(1) if m else None
        self.field = field


class DeviceError(ValueError):
    """A torch device that does not exist here (``bogus``, ``cuda`` without a GPU, ``cuda:7`` of one)."""


#: (module, class names) of the errors that mean "bad input, configuration or files", not a bug:
#: the CLI prints them as one line (no traceback unless --debug).
_READABLE = (
    ("gmt_model.errors", ("RoutingError", "DeviceError")),
    ("gmt_model.method.config", ("ConfigError",)),
    ("gmt_model.data.jsonl", ("FormatError",)),
    ("gmt_model.method.checkpoint", ("CheckpointError",)),
    ("gmt_model.data.sources", ("SourceError",)),
    ("gmt_model.serving.registry", ("RegistryError",)),
    ("gmt_model.serving.endpoints", ("EndpointConfigError", "MissingAPIKeyError", "UpstreamError")),
    ("gmt_model.data.encoder", ("EncoderUnavailableError",)),
    ("gmt_model.method.graph", ("GraphIntegrityError",)),
    ("gmt_model.data.convert", ("ConversionError",)),
    ("gmt_model.serving.server", ("ServerConfigError",)),
)


def readable_error_types() -> tuple[type[BaseException], ...]:
    """The readable error classes of the modules loaded so far.

    An exception can only be an instance of a class whose module was
    imported, so this never imports anything (the CLI stays light).
    """
    out: list[type[BaseException]] = [OSError]
    for mod_name, names in _READABLE:
        mod = sys.modules.get(mod_name)
        if mod is None:
            continue
        for name in names:
            cls = getattr(mod, name, None)
            if isinstance(cls, type) and issubclass(cls, BaseException):
                out.append(cls)
    return tuple(out)


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (OSError: ``path: reason``)."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}"
    else:
        text = str(exc) or type(exc).__name__
    parts = [p.strip() for p in text.splitlines() if p.strip()]
    return " | ".join(parts) if parts else type(exc).__name__
