"""Local test servers shared by the HTTP tests: uvicorn in a thread and a fake
OpenAI-compatible upstream with one tenant per LLM name (127.0.0.1 only)."""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse


class ServerThread:
    """uvicorn on 127.0.0.1:<free port> in a daemon thread (a context manager)."""

    def __init__(self, app: Any, log_level: str = "warning") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_config=None, log_level=log_level, lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn test server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


class TenantUpstream:
    """``POST /{tenant}/v1/chat/completions`` answers ``"<tenant> answers: <question>"``
    and records every request (tenant, Authorization header, body); with ``stream: true``
    the answer comes as SSE chunks (one per word, then ``[DONE]``), each naming the
    upstream's own model."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.url = ""
        app = FastAPI()

        @app.post("/{tenant}/v1/chat/completions")
        async def completions(tenant: str, request: Request) -> JSONResponse:
            body = await request.json()
            self.requests.append({"tenant": tenant, "auth": request.headers.get("authorization"), "body": body})
            answer = f"{tenant} answers: {body['messages'][-1]['content']}"
            if body.get("stream") is True:
                def events():
                    for i, word in enumerate(answer.split(" ")):
                        chunk = {"id": f"cmpl-{tenant}", "object": "chat.completion.chunk", "created": 1,
                                 "model": body["model"],
                                 "choices": [{"index": 0, "delta": {"content": word if i == 0 else " " + word},
                                              "finish_reason": None}]}
                        yield f"data: {json.dumps(chunk)}\n\n"
                    yield "data: [DONE]\n\n"

                return StreamingResponse(events(), media_type="text/event-stream")
            return JSONResponse({"id": f"cmpl-{tenant}", "object": "chat.completion", "created": 1,
                                 "model": body["model"],
                                 "choices": [{"index": 0, "message": {"role": "assistant", "content": answer},
                                              "finish_reason": "stop"}]})

        self.app = app
