"""Host side of a MAS script run: a resumable session that turns a design into LLM requests.

``start(design_text, task_text)`` extracts and checks the script, starts it in the sandbox and
runs it until its first LLM request; ``reply(text)`` hands the reply back and runs to the next
request. Both return :class:`~mx_envs.mas.protocol.LLMRequest` or
:class:`~mx_envs.mas.protocol.Finished`; whatever the script does, nothing is raised to the
caller. Tool calls are separate ``sandbox.run`` calls made here, on the host.

Every message from the script is parsed into its type of :mod:`mx_envs.mas.protocol` and checked
against the state of the run (a request sent as a request, an agent announced before it calls, the
python tool only for an agent that has it, an agent announced once); any other message ends the
episode as ``protocol_violation``. Budgets (calls, agents, sizes) end it as ``budget_exceeded``.
"""

from __future__ import annotations

import json
import time
from typing import Any

from mx_envs.mas.protocol import (
    REQUESTS,
    AgentNotice,
    AgentTurn,
    Budgets,
    Finished,
    Init,
    LLMCall,
    LLMRequest,
    ProtocolViolation,
    Reply,
    ScriptError,
    ScriptMessage,
    ScriptResult,
    TerminationReason,
    ToolCall,
    ToolRequest,
    ToolResult,
    parse_script_message,
)
from mx_envs.mas.runner import BOOTSTRAP
from mx_envs.mas.script import check_script, extract_script
from mx_envs.sandbox.api import Channel, Limits, RunResult, Sandbox, Verdict
from mx_envs.sandbox.process import ChannelClosed

# Modules the warm sandbox server should hold, so that a script starts without imports from disk.
PRELOAD = ("mx_envs.sandbox.channel", "mx_envs.mas.lib", "mx_envs.mas.runner")
TOOL_OUTPUT_CHARS = 8000  # per stream, what the script gets back from a tool run
ERROR_TAIL_CHARS = 2000
_ERROR_REASONS = {
    "missing_entry": TerminationReason.MISSING_ENTRY,
    "exception": TerminationReason.EXCEPTION,
    "protocol": TerminationReason.PROTOCOL_VIOLATION,
}


def default_mas_sandbox() -> Sandbox:
    """The process sandbox with the script library preloaded in its warm server."""
    from mx_envs.sandbox import get_sandbox

    return get_sandbox("process", extra_preload=PRELOAD)


def answer_text(answer: Any) -> str:
    """The grader's view of an answer: strings as they are, other values as JSON (``None``: "")."""
    if answer is None:
        return ""
    if isinstance(answer, str):
        return answer
    try:
        return json.dumps(answer, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(answer)


def _tail(text: str, n: int = ERROR_TAIL_CHARS) -> str:
    return text if len(text) <= n else "..." + text[-n:]


def _clip(text: str, n: int) -> str:
    if len(text) <= n:
        return text
    return text[: n // 2] + "\n...[truncated]...\n" + text[-n // 2 :]


class _End(Exception):
    """Internal: the session must end with ``reason`` (never leaves this module)."""

    def __init__(self, reason: TerminationReason, error: str) -> None:
        super().__init__(error)
        self.reason = reason
        self.error = error


class MASSession:
    """One design run on one task, driven one LLM turn at a time.

    ``trajectories`` maps each sub-agent name to its :class:`AgentTurn` list (the nested
    execution envs); ``finished`` holds the outcome once there is one. ``start`` may be called
    again to run another episode with the same session (the previous run is ended first).
    ``script_limits`` bound the script's process (the sandbox pauses its wall clock while it
    awaits an answer); the script's own time is bounded by ``budgets.wall_s`` here. ``tool_limits`` default to ``budgets.tool_wall_s`` and
    ``budgets.tool_memory_mb``.
    """

    def __init__(
        self,
        sandbox: Sandbox | None = None,
        budgets: Budgets | None = None,
        tool_limits: Limits | None = None,
        script_limits: Limits | None = None,
        prestart: bool = True,
    ) -> None:
        self.budgets = budgets or Budgets()
        # Keep the next episode's script process started and waiting (its wall clock held), so an
        # episode start is one message instead of a sandbox start. Costs one idle sandboxed process.
        self.prestart = prestart
        self._spare: Any = None
        self._retired: list[Any] = []  # completed runs being killed; their output collected lazily
        self._stale = 0  # how many of ``_retired`` (the oldest) belong to earlier episodes
        self._sandbox = sandbox
        # Scripts and tools are policy-written code: the allow-list world, never a wider view.
        self.tool_limits = tool_limits or Limits(
            wall_s=self.budgets.tool_wall_s, memory_mb=self.budgets.tool_memory_mb, file_view="allowlist"
        )
        # The sandbox pauses the script's wall clock while it waits for an answer (LLM or tool), so
        # its wall limit is a backstop just above the host's own script-time budget.
        self.script_limits = script_limits or Limits(
            wall_s=self.budgets.wall_s + 10.0, cpu_s=self.budgets.wall_s + 5.0, memory_mb=1024, max_processes=32,
            file_view="allowlist",
        )
        self._channel: Channel | None = None
        self._reset()

    # ------------------------------------------------------------------ public API

    @property
    def sandbox(self) -> Sandbox:
        if self._sandbox is None:
            self._sandbox = default_mas_sandbox()
        return self._sandbox

    @property
    def pending(self) -> LLMRequest | None:
        """The request awaiting :meth:`reply`, if any."""
        return self._pending

    def start(self, design_text: str, task_text: str) -> LLMRequest | Finished:
        """Extract and check the script in ``design_text``, run ``forward(task_text)`` to its first request."""
        if self._channel is not None and self.finished is None:
            self._finish(TerminationReason.TRUNCATED, error="session closed by the host")
        self._kill()  # the previous run (the spare, if any, stays for this one)
        self._collect_retired(block=False, record=False)
        self._reset()
        if not isinstance(task_text, str):
            raise TypeError(f"task_text must be a str, got {type(task_text).__name__}")
        script = extract_script(design_text)
        if script is None:
            return self._finish(
                TerminationReason.NO_CODE,
                error="no script found: expected a ```python block that defines forward(task)",
            )
        self.script = script
        problem = check_script(script)
        if problem is not None:
            return self._finish(problem[0], error=problem[1])
        try:
            self._channel = self._take_spare() or self.sandbox.start(BOOTSTRAP, limits=self.script_limits)
            self._channel.send(Init(script, task_text).to_wire())
        except Exception as exc:  # noqa: BLE001 - any sandbox failure is a result, not a crash
            return self._finish(TerminationReason.SANDBOX_ERROR, error=f"could not start the script: {exc!r}")
        self._start_spare()
        return self._advance()

    def _take_spare(self) -> Channel | None:
        spare, self._spare = self._spare, None
        if spare is None:
            return None
        ch, limits = spare
        if limits == self.script_limits:
            return ch
        try:
            ch.kill()
        except Exception:  # noqa: BLE001
            pass
        return None

    def _start_spare(self) -> None:
        """Start the next episode's script process now; it waits for its init message."""
        if not self.prestart or self._spare is not None:
            return
        try:
            ch = self.sandbox.start(BOOTSTRAP, limits=self.script_limits)
        except Exception:  # noqa: BLE001 - the next start() then starts its own
            return
        hold = getattr(ch, "hold", None)
        if hold is None:  # a backend that cannot hold the wall clock: no spare
            ch.kill()
            return
        hold()
        self._spare = (ch, self.script_limits)

    def reply(self, text: str) -> LLMRequest | Finished:
        """Give the pending request its reply; run the script to its next request or its end."""
        if self._pending is None:
            raise RuntimeError("reply() without a pending LLM request (call start() first)")
        if not isinstance(text, str):
            raise TypeError(f"reply text must be a str, got {type(text).__name__}")
        req, self._pending = self._pending, None
        self.trajectories.setdefault(req.agent, []).append(
            AgentTurn(req.call_index, req.agent, req.messages, text, dict(req.options))
        )
        try:
            self._send(Reply(text).to_wire())
        except _End as end:
            return self._finish(end.reason, error=end.error)
        return self._advance()

    def close(self) -> None:
        """End the script process if it still runs (a live episode ends as TRUNCATED), and the spare."""
        if self._channel is not None and self.finished is None:
            self._finish(TerminationReason.TRUNCATED, error="session closed by the host")
        self._kill()
        self._kill_spare()
        self._collect_retired(block=True)

    def _kill_spare(self) -> None:
        spare, self._spare = self._spare, None
        if spare is not None:
            try:
                spare[0].kill()
            except Exception:  # noqa: BLE001
                pass

    def __enter__(self) -> MASSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self._kill()
            self._kill_spare()
        except Exception:  # noqa: BLE001 - interpreter teardown
            pass

    # ------------------------------------------------------------------ internals

    def _reset(self) -> None:
        self.script: str | None = None
        self.finished: Finished | None = None
        self.trajectories: dict[str, list[AgentTurn]] = {}
        self.agents: list[str] = []
        self._agent_tools: dict[str, tuple[str, ...]] = {}  # announced agents and their tools
        self.tool_calls: list[ToolCall] = []
        self._script_output: str = ""  # the script's stdout/stderr, for debugging designs
        self.script_run_verdict: str | None = None  # the sandbox's verdict when the process ended on its own
        self.script_time_s = 0.0  # the script's own time so far (LLM and tool time excluded)
        self._llm_calls = 0
        self._pending: LLMRequest | None = None

    @property
    def script_output(self) -> str:
        """The script's stdout/stderr (tail), for debugging designs."""
        if len(self._retired) > self._stale:  # this episode's retired run: collect its output
            self._collect_retired(block=True)
            self._stale = 0
        return self._script_output

    @script_output.setter
    def script_output(self, value: str) -> None:
        self._script_output = value

    def _retire(self) -> None:
        """End a script that already delivered its answer without waiting for its run's result."""
        ch, self._channel = self._channel, None
        if ch is None:
            return
        terminate = getattr(ch, "terminate", None)
        if terminate is None:
            self._record_output(ch.kill())
            return
        terminate()
        self._retired.append(ch)  # the newest is this episode's

    def _collect_retired(self, block: bool, record: bool = True) -> None:
        """Release retired runs (done ones, or all with ``block``); the newest one's output is the
        session's ``script_output`` unless a new episode started since (``record=False``)."""
        keep = []
        for i, ch in enumerate(self._retired):
            if not block and not getattr(ch, "done", True):
                keep.append(ch)
                continue
            try:
                run = ch.wait(timeout=5.0)
                if record and i == len(self._retired) - 1:
                    self._record_output(run)
            except Exception:  # noqa: BLE001
                pass
        self._retired = keep
        if not record:
            self._stale = len(keep)  # still running, but their output belongs to past episodes

    def _record_output(self, run: RunResult | None) -> None:
        if run is not None:
            out = run.stdout + (("\n" + run.stderr) if run.stderr else "")
            self._script_output = _tail(out, 8 * ERROR_TAIL_CHARS)

    def _kill(self) -> RunResult | None:
        ch, self._channel = self._channel, None
        if ch is None:
            return None
        try:
            return ch.kill()
        except Exception:  # noqa: BLE001
            return None

    def _send(self, message: dict[str, Any]) -> None:
        assert self._channel is not None
        try:
            self._channel.send(message)
        except Exception:  # noqa: BLE001 - the script died: its exit status tells why (next recv)
            pass

    def _finish(
        self, reason: TerminationReason, error: str = "", answer: Any = None, run: RunResult | None = None
    ) -> Finished:
        if reason is TerminationReason.COMPLETED and run is None:
            self._retire()  # the answer is in: its process ends off the episode's critical path
        else:
            killed = self._kill()
            self._record_output(run or killed)
        self._pending = None
        self.finished = Finished(
            reason=reason,
            answer=answer if reason is TerminationReason.COMPLETED else None,
            answer_text=answer_text(answer) if reason is TerminationReason.COMPLETED else None,
            error=error,
            llm_calls=self._llm_calls,
            agents=list(self.agents),
            tool_calls=list(self.tool_calls),
        )
        return self.finished

    def _advance(self) -> LLMRequest | Finished:
        """Serve the script's messages until it asks for an LLM reply or ends."""
        try:
            while True:
                message = self._recv()
                if message is None:
                    return self._finish_from_exit()
                out = self._handle(message)
                if out is not None:
                    return out
        except _End as end:
            return self._finish(end.reason, error=end.error)
        except Exception as exc:  # noqa: BLE001 - a broken channel is a sandbox failure, not a crash
            return self._finish(TerminationReason.SANDBOX_ERROR, error=f"channel failure: {exc!r}")

    def _recv(self) -> dict[str, Any] | None:
        assert self._channel is not None
        remaining = self.budgets.wall_s - self.script_time_s
        if remaining <= 0:
            raise _End(TerminationReason.TIMEOUT, self._timeout_error())
        t0 = time.perf_counter()
        try:
            message = self._channel.recv(timeout=remaining)
        except TimeoutError:
            self.script_time_s += time.perf_counter() - t0
            raise _End(TerminationReason.TIMEOUT, self._timeout_error()) from None
        except ChannelClosed as exc:  # the channel kills a script whose frame is not JSON or too large
            raise _End(TerminationReason.PROTOCOL_VIOLATION, f"protocol violation: {exc}") from None
        self.script_time_s += time.perf_counter() - t0
        return message

    def _timeout_error(self) -> str:
        return (
            f"script time budget of {self.budgets.wall_s:g} s exceeded "
            f"({self.script_time_s:.2f} s of script time, LLM and tool time excluded)"
        )

    def _finish_from_exit(self) -> Finished:
        assert self._channel is not None
        try:
            run = self._channel.wait(timeout=5.0)
        except Exception:  # noqa: BLE001
            run = self._kill()
        if run is None:
            return self._finish(TerminationReason.SANDBOX_ERROR, error="script process vanished")
        detail = f"exit code {run.exit_code}" + (f", signal {run.signal}" if run.signal else "")
        why = f"{run.message}; " if run.message else ""
        stderr = f"\n{_tail(run.stderr)}" if run.stderr.strip() else ""
        v = run.verdict
        self.script_run_verdict = v.value
        if v is Verdict.TIMEOUT:
            reason = TerminationReason.TIMEOUT
            error = f"script process hit its time limit ({why}{detail})"
        elif v is Verdict.MEMORY_EXCEEDED:
            reason = TerminationReason.BUDGET_EXCEEDED
            error = f"script process hit its memory limit of {self.script_limits.memory_mb} MB ({why}{detail})"
        elif v is Verdict.OUTPUT_EXCEEDED:
            reason = TerminationReason.BUDGET_EXCEEDED
            error = f"script process hit its output/file size limit ({why}{detail})"
        elif v is Verdict.SANDBOX_ERROR:
            reason = TerminationReason.SANDBOX_ERROR
            error = f"sandbox failure running the script ({why}{detail}){stderr}"
        else:
            reason = TerminationReason.EXCEPTION
            error = f"script process ended without an answer ({why}{detail}){stderr}"
        self._channel = None
        return self._finish(reason, error=error, run=run)

    def _handle(self, raw: Any) -> LLMRequest | Finished | None:
        message = self._parse(raw)
        if isinstance(message, AgentNotice):
            self._register(message)
            return None
        if isinstance(message, LLMCall):
            return self._llm_request(message)
        if isinstance(message, ToolRequest):
            self._tool(message)
            return None
        if isinstance(message, ScriptResult):
            size = len(answer_text(message.answer))
            if size > self.budgets.max_message_chars:
                raise _End(
                    TerminationReason.BUDGET_EXCEEDED,
                    f"answer of {size} characters exceeds max_message_chars={self.budgets.max_message_chars}",
                )
            return self._finish(TerminationReason.COMPLETED, answer=message.answer)
        assert isinstance(message, ScriptError)
        return self._finish(_ERROR_REASONS[message.kind], error=_tail(message.error))

    def _parse(self, raw: Any) -> ScriptMessage:
        """``raw`` as its protocol type, sent the way the runtime sends it (a request or a notice)."""
        try:
            message = parse_script_message(raw)
        except ProtocolViolation as exc:
            raise _End(TerminationReason.PROTOCOL_VIOLATION, f"protocol violation: {exc}") from None
        awaiting = getattr(self._channel, "awaiting_reply", None)  # None: a channel that cannot tell
        is_request = isinstance(message, REQUESTS)
        if awaiting is not None and awaiting != is_request:
            how = "without awaiting an answer" if is_request else "as a request awaiting an answer"
            raise _End(TerminationReason.PROTOCOL_VIOLATION, f"protocol violation: {message.TYPE!r} message sent {how}")
        return message

    def _violation(self, error: str) -> _End:
        return _End(TerminationReason.PROTOCOL_VIOLATION, f"protocol violation: {error}")

    def _register(self, notice: AgentNotice) -> None:
        name = notice.name
        if name in self._agent_tools:
            raise self._violation(f"agent {name!r} announced twice")
        if len(self.agents) >= self.budgets.max_agents:
            raise _End(
                TerminationReason.BUDGET_EXCEEDED,
                f"sub-agent budget exceeded: agent {name!r} would be number {len(self.agents) + 1} "
                f"(max_agents={self.budgets.max_agents})",
            )
        self.agents.append(name)
        self._agent_tools[name] = notice.tools

    def _announced(self, name: str, what: str) -> tuple[str, ...]:
        tools = self._agent_tools.get(name)
        if tools is None:
            raise self._violation(f"{what} by agent {name!r}, which was never announced")
        return tools

    def _llm_request(self, call: LLMCall) -> LLMRequest:
        name = call.agent
        self._announced(name, "an LLM call")
        for m in call.messages:
            if len(m["content"]) > self.budgets.max_message_chars:
                raise _End(
                    TerminationReason.BUDGET_EXCEEDED,
                    f"message size budget exceeded: a {m['role']} message to {name!r} has "
                    f"{len(m['content'])} characters (max_message_chars={self.budgets.max_message_chars})",
                )
        if self._llm_calls >= self.budgets.max_llm_calls:
            raise _End(
                TerminationReason.BUDGET_EXCEEDED,
                f"LLM call budget exceeded: call {self._llm_calls + 1} by {name!r} "
                f"(max_llm_calls={self.budgets.max_llm_calls})",
            )
        self._pending = LLMRequest(
            call_index=self._llm_calls, agent=name, messages=list(call.messages), options=dict(call.options)
        )
        self._llm_calls += 1
        return self._pending

    def _tool(self, request: ToolRequest) -> None:
        name, code = request.agent, request.code
        if request.tool not in self._announced(name, f"a {request.tool} tool call"):
            raise self._violation(f"{request.tool} tool call by agent {name!r}, which was announced without it")
        if len(self.tool_calls) >= self.budgets.max_tool_calls:
            raise _End(
                TerminationReason.BUDGET_EXCEEDED,
                f"tool call budget exceeded (max_tool_calls={self.budgets.max_tool_calls})",
            )
        if len(code) > self.budgets.max_message_chars:
            raise _End(
                TerminationReason.BUDGET_EXCEEDED,
                f"tool code of {len(code)} characters exceeds max_message_chars={self.budgets.max_message_chars}",
            )
        try:
            run = self.sandbox.run(code, limits=self.tool_limits)
            verdict, stdout, stderr = run.verdict.value, run.stdout, run.stderr
            if run.message and not run.ok:
                stderr = (stderr + "\n" if stderr else "") + run.message
        except Exception as exc:  # noqa: BLE001 - a failed tool run is the agent's output, not a crash
            verdict, stdout, stderr = Verdict.SANDBOX_ERROR.value, "", f"sandbox failure: {exc!r}"
        stdout, stderr = _clip(stdout, TOOL_OUTPUT_CHARS), _clip(stderr, TOOL_OUTPUT_CHARS)
        self.tool_calls.append(ToolCall(name, "python", code, verdict, stdout, stderr))
        self._send(ToolResult(verdict, stdout, stderr).to_wire())

