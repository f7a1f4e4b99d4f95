"""Identity: per-user API keys and a trusted identity header."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

from gmt_model.serving.http_errors import ServerConfigError

__all__ = ["ApiKeys", "load_api_keys", "check_header_name"]

_MIN_KEY_CHARS = 16

def _key_digest(key: str | bytes) -> str:
    return hashlib.sha256(key.encode("utf-8") if isinstance(key, str) else key).hexdigest()


class ApiKeys:
    """Per-user API keys: bearer key -> user id.

    Only SHA-256 digests of the keys are kept.  A mapping key may be the
    plain API key or ``sha256:<64 hex digits>`` (the digest of the key), so a
    keys file need not hold the keys themselves.  ``repr`` shows the number
    of keys only.
    """

    def __init__(self, mapping: Mapping[str, str], *, source: str = "api keys") -> None:
        if not isinstance(mapping, Mapping):
            raise ServerConfigError(f"{source}: expected a mapping of API key -> user id, got {type(mapping).__name__}")
        self._users: dict[str, str] = {}
        for n, (key, user) in enumerate(mapping.items(), 1):
            if not isinstance(user, str) or not re.fullmatch(r"[\w.@:+\-/#]{1,256}", user):
                raise ServerConfigError(
                    f"{source}: entry {n}: the user id must be 1-256 letters, digits or ._@:+-/#, got {user!r}")
            if not isinstance(key, str):
                raise ServerConfigError(f"{source}: entry {n} (user {user!r}): the API key must be a string")
            if key.startswith("sha256:"):
                digest = key[len("sha256:"):].lower()
                if not re.fullmatch(r"[0-9a-f]{64}", digest):
                    raise ServerConfigError(
                        f"{source}: entry {n} (user {user!r}): 'sha256:' must be followed by 64 hex digits")
            else:
                if len(key) < _MIN_KEY_CHARS or key != key.strip() or any(c.isspace() for c in key):
                    raise ServerConfigError(
                        f"{source}: entry {n} (user {user!r}): an API key must be at least {_MIN_KEY_CHARS} "
                        "characters without spaces")
                digest = _key_digest(key)
            if digest in self._users and self._users[digest] != user:
                raise ServerConfigError(f"{source}: entry {n} (user {user!r}): the same key is given to two users")
            self._users[digest] = user
        if not self._users:
            raise ServerConfigError(f"{source}: no API keys")

    def lookup(self, key: str | bytes) -> str | None:
        """The user id of ``key``, or None (looked up by digest: the time taken says nothing about the keys)."""
        return self._users.get(_key_digest(key))

    def __len__(self) -> int:
        return len(self._users)

    def __repr__(self) -> str:
        return f"ApiKeys({len(self._users)} keys)"

    __str__ = __repr__


def load_api_keys(path: str | os.PathLike[str]) -> ApiKeys:
    """Read a JSON or YAML file ``{api_key: user_id}`` (keys may be ``sha256:<hex>``)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ServerConfigError(f"{p}: API keys file not found") from None
    except OSError as exc:
        raise ServerConfigError(f"{p}: cannot read the API keys file ({exc.strerror})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{p}:{mark.line + 1}" if mark is not None else str(p)
            raise ServerConfigError(f"{where}: neither JSON nor YAML ({getattr(exc, 'problem', None) or 'invalid'})") from None
    return ApiKeys(data if data is not None else {}, source=str(p))


def _check_header_name(name: str | None) -> str | None:
    if name is None:
        return None
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", name):
        raise ServerConfigError(f"identity header: {name!r} is not a valid HTTP header name")
    if name.lower() in ("authorization", "cookie", "host", "content-length", "content-type"):
        raise ServerConfigError(f"identity header: {name!r} cannot carry the user id")
    return name.lower()



check_header_name = _check_header_name
