"""Server-sent events: set each upstream chunk's ``model`` to the routed LLM name."""

from __future__ import annotations

import json
import re

_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")


class _SSEModelRewriter:
    """Feeds upstream SSE bytes, returns complete events with ``"model"`` rewritten.

    Events are passed on as soon as they are complete (no buffering beyond
    one event); a ``data:`` line that is not a JSON object with a ``model``
    key (``[DONE]``, comments, other fields) passes unchanged.
    """

    def __init__(self, model: str) -> None:
        self.model = model
        self.buf = b""

    def _event(self, raw: bytes) -> bytes:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw
        lines = text.splitlines(keepends=True)
        data_lines = [i for i, line in enumerate(lines) if line.startswith("data:")]
        if len(data_lines) != 1:
            return raw
        i = data_lines[0]
        line = lines[i]
        body = line[len("data:"):]
        ending = body[len(body.rstrip("\r\n")):]
        payload = body.strip()
        if not payload.startswith("{"):
            return raw
        try:
            obj = json.loads(payload)
        except json.JSONDecodeError:
            return raw
        if not isinstance(obj, dict) or "model" not in obj:
            return raw
        obj["model"] = self.model
        lines[i] = "data: " + json.dumps(obj, ensure_ascii=False) + ending
        return "".join(lines).encode("utf-8")

    def feed(self, chunk: bytes) -> bytes:
        self.buf += chunk
        out = []
        while True:
            m = _EVENT_END.search(self.buf)
            if m is None:
                break
            event, sep, self.buf = self.buf[: m.start()], m.group(0), self.buf[m.end():]
            out.append(self._event(event) + sep)
        return b"".join(out)

    def flush(self) -> bytes:
        rest, self.buf = self.buf, b""
        return self._event(rest) if rest.strip() else rest


