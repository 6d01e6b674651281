"""A test double of an OpenAI-compatible chat server on 127.0.0.1 (not a real model server).

It answers ``POST /v1/chat/completions`` with a deterministic reply (the last user message reversed,
one "token" per character: id = code point, logprob = -0.25), following a script of faults: each
entry of ``faults`` is consumed by one incoming request, in order (``"500"``, ``"429"``,
``"sleep:<seconds>"``, ``"reject-extensions"`` = HTTP 400 when vLLM extension fields are present).
``token_ids=False`` mimics a server without vLLM's ``return_token_ids``. Every request body is
recorded in ``requests``.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class ChatServerDouble:
    def __init__(self, faults: list[str] | None = None, token_ids: bool = True,
                 logprobs: bool = True) -> None:
        self.faults = list(faults or [])
        self.token_ids = token_ids
        self.logprobs = logprobs
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.max_in_flight = 0
        self._in_flight = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> ChatServerDouble:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _next_fault(self) -> str:
        with self._lock:
            return self.faults.pop(0) if self.faults else ""

    def reply_text(self, messages: list[dict[str, str]]) -> str:
        """The full reply to ``messages`` before the token limit: the last user message reversed."""
        return [m["content"] for m in messages if m["role"] == "user"][-1][::-1]

    def reply(self, body: dict[str, Any]) -> dict[str, Any]:
        user = [m["content"] for m in body["messages"] if m["role"] == "user"][-1]
        full = self.reply_text(body["messages"])
        text = full[: body.get("max_tokens", 256)]
        finish = "length" if len(full) > body.get("max_tokens", 256) else "stop"
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text},
                                  "finish_reason": finish}
        if self.logprobs and body.get("logprobs"):
            choice["logprobs"] = {"content": [{"token": c, "logprob": -0.25} for c in text]}
        data: dict[str, Any] = {"id": "double", "object": "chat.completion", "choices": [choice],
                                "usage": {"completion_tokens": len(text)}}
        if self.token_ids and body.get("return_token_ids"):
            choice["token_ids"] = [ord(c) for c in text]
            data["prompt_token_ids"] = [ord(c) for c in user]
        return data

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        double = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                raw = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(raw)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(raw)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and hung up

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with double._lock:
                    double.requests.append(body)
                    double.headers.append(dict(self.headers))
                    double._in_flight += 1
                    double.max_in_flight = max(double.max_in_flight, double._in_flight)
                try:
                    fault = double._next_fault()
                    if fault == "500":
                        return self._send(500, {"error": "injected server error"})
                    if fault == "429":
                        return self._send(429, {"error": "slow down"}, {"Retry-After": "0"})
                    if fault.startswith("sleep:"):
                        time.sleep(float(fault.split(":", 1)[1]))
                    if fault == "reject-extensions" and ("return_token_ids" in body or "top_k" in body):
                        return self._send(400, {"error": "unknown field return_token_ids"})
                    if not self.path.endswith("/chat/completions"):
                        return self._send(404, {"error": "not found"})
                    time.sleep(0.02)  # long enough for concurrent requests to overlap
                    return self._send(200, double.reply(body))
                finally:
                    with double._lock:
                        double._in_flight -= 1

        return Handler
