"""Test doubles for the MAS session tests.

* :class:`ScriptedLLM` — a TEST DOUBLE of the LLM: replies chosen by agent name and/or message
  content, recording every request it saw.
* :class:`PipeSandbox` — a TEST DOUBLE of the sandbox (NO isolation, no limits beyond a wall
  kill): runs the child in a plain subprocess with the channel as JSON lines on stdin/stdout.
  Used only to exercise the session logic independently of the real sandbox; the main tests
  use the real :mod:`mx_envs.sandbox`.
* :class:`BrokenSandbox` — a TEST DOUBLE whose ``start``/``run`` fail, to provoke SANDBOX_ERROR.
"""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mx_envs.mas import protocol
from mx_envs.mas.protocol import Finished, LLMRequest
from mx_envs.mas.session import MASSession
from mx_envs.sandbox.api import Limits, RunResult, Verdict

REPO = Path(__file__).resolve().parents[3]

Reply = str | Callable[[LLMRequest], str]


class ScriptedLLM:
    """TEST DOUBLE of an LLM. ``rules`` are tried in order: (agent regex, content regex, reply).

    A rule matches when the agent name, or its base name without a ``#k`` suffix, matches
    ``agent`` (``re.fullmatch``; ``None``: any) and
    the last message's content contains ``content`` (``re.search``; ``None``: any). ``reply``
    is a string or a function of the request. No match: ``default`` (or an AssertionError).
    """

    def __init__(self, rules: list[tuple[str | None, str | None, Reply]], default: Reply | None = None):
        self.rules = rules
        self.default = default
        self.requests: list[LLMRequest] = []

    def __call__(self, req: LLMRequest) -> str:
        self.requests.append(req)
        last = req.messages[-1]["content"] if req.messages else ""
        for agent, content, reply in self.rules:
            base = req.agent.split("#")[0]
            if agent is not None and not (re.fullmatch(agent, req.agent) or re.fullmatch(agent, base)):
                continue
            if content is not None and not re.search(content, last):
                continue
            return reply(req) if callable(reply) else reply
        if self.default is None:
            raise AssertionError(f"ScriptedLLM: no rule for agent {req.agent!r}: {last[:200]!r}")
        return self.default(req) if callable(self.default) else self.default


def drive(session: MASSession, design: str, task: str, llm: Callable[[LLMRequest], str]) -> Finished:
    """Run a whole episode: start, then answer each request with ``llm`` until finished."""
    out = session.start(design, task)
    for _ in range(1000):
        if isinstance(out, Finished):
            return out
        out = session.reply(llm(out))
    raise AssertionError("episode did not finish")


_CHILD = r"""
import json, sys
_out = sys.stdout
sys.stdout = sys.stderr
class _Ch:
    def send(self, m):
        _out.write(json.dumps(m) + "\n"); _out.flush()
    def recv(self):
        line = sys.stdin.readline()
        if not line:
            raise SystemExit(0)
        return json.loads(line)
    def request(self, m):
        self.send(m)
        return self.recv()
from mx_envs.mas.runner import main
main(_Ch())
"""


class PipeChannel:
    """TEST DOUBLE channel over a subprocess's stdin/stdout (see :class:`PipeSandbox`)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self._q: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._q.put(json.loads(line))
        self._q.put(None)

    def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()

    def recv(self, timeout: float | None = None) -> dict[str, Any] | None:
        try:
            return self._q.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError from None

    def wait(self, timeout: float | None = None) -> RunResult:
        code = self.proc.wait(timeout)
        err = self.proc.stderr.read() if self.proc.stderr else ""
        return RunResult(Verdict.OK if code == 0 else Verdict.RUNTIME_ERROR, code, stderr=err)

    def kill(self) -> RunResult:
        self.proc.kill()
        self.proc.wait()
        return RunResult(Verdict.KILLED, self.proc.returncode)


class PipeSandbox:
    """TEST DOUBLE sandbox: plain subprocesses, no isolation. See the module docstring."""

    name = "pipe-double"

    def __init__(self) -> None:
        self.env = {**os.environ, "PYTHONPATH": str(REPO)}

    def start(self, source: str, limits: Limits | None = None, files: dict | None = None) -> PipeChannel:
        proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env=self.env, cwd=REPO,
        )
        return PipeChannel(proc)

    def run(self, source: str, stdin: str = "", limits: Limits | None = None, files: dict | None = None) -> RunResult:
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, timeout=30)
        return RunResult(
            Verdict.OK if p.returncode == 0 else Verdict.RUNTIME_ERROR, p.returncode,
            stdout=p.stdout, stderr=p.stderr, wall_s=time.perf_counter() - t0,
        )

    def close(self) -> None:
        pass


class BrokenSandbox:
    """TEST DOUBLE sandbox whose every operation fails, to provoke SANDBOX_ERROR."""

    name = "broken-double"

    def start(self, source: str, limits: Limits | None = None, files: dict | None = None) -> Any:
        raise OSError("sandbox server unavailable")

    def run(self, source: str, stdin: str = "", limits: Limits | None = None, files: dict | None = None) -> RunResult:
        raise OSError("sandbox server unavailable")

    def close(self) -> None:
        pass


class LoopbackTransport:
    """TEST DOUBLE of the script's host transport, in-process: LLM calls go to ``llm``.

    Tool calls are answered by ``tool`` (a function of the code) without running anything.
    Every message is recorded in ``sent``, after the host's parser accepted it.
    """

    def __init__(self, llm: Callable[[LLMRequest], str], tool: Callable[[str], str] | None = None):
        self.llm = llm
        self.tool = tool or (lambda code: "")
        self.sent: list[dict[str, Any]] = []
        self.calls = 0

    def notify(self, message: dict[str, Any]) -> None:
        assert not isinstance(protocol.parse_script_message(message), protocol.REQUESTS), message
        self.sent.append(message)

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        parsed = protocol.parse_script_message(message)  # raises ProtocolViolation as the host would
        self.sent.append(message)
        if isinstance(parsed, protocol.ToolRequest):
            return protocol.ToolResult("ok", self.tool(parsed.code), "").to_wire()
        assert isinstance(parsed, protocol.LLMCall), message
        req = LLMRequest(self.calls, parsed.agent, list(parsed.messages), dict(parsed.options))
        self.calls += 1
        return protocol.Reply(self.llm(req)).to_wire()
