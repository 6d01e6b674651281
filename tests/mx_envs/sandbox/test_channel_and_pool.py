"""Host channel (start), concurrency, server-death recovery, shared pool and CLI."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest

from mx_envs.sandbox import Channel, Limits, ProcessSandbox, Verdict, default_sandbox, get_sandbox

ECHO = """
from mx_envs.sandbox import channel
n = 0
while True:
    msg = channel.request({"type": "ask", "n": n})
    if msg.get("stop"):
        break
    n += 1
channel.send({"type": "done", "n": n})
print("bye")
"""


def test_channel_request_reply_roundtrip(sandbox):
    ch = sandbox.start(ECHO, Limits(wall_s=10))
    assert isinstance(ch, Channel)
    for i in range(50):
        msg = ch.recv(timeout=10)
        assert msg == {"type": "ask", "n": i}
        assert ch.awaiting_reply
        ch.send({"stop": i == 49})
    assert ch.recv(timeout=10) == {"type": "done", "n": 49}
    assert ch.recv(timeout=10) is None
    r = ch.wait(timeout=10)
    assert r.verdict is Verdict.OK and r.stdout == "bye\n", r


def test_channel_wall_clock_paused_while_host_answers(sandbox):
    # Wall limit 1 s, but the host takes 1.5 s to answer the request: the run must survive.
    src = "from mx_envs.sandbox import channel\nprint(channel.request({'q': 1}))"
    ch = sandbox.start(src, Limits(wall_s=1))
    assert ch.recv(timeout=5) == {"q": 1}
    time.sleep(1.5)
    ch.send({"a": 2})
    r = ch.wait(timeout=5)
    assert r.verdict is Verdict.OK and r.stdout == "{'a': 2}\n", r
    # Without an outstanding request the wall clock runs.
    ch = sandbox.start("import time; time.sleep(30)", Limits(wall_s=1))
    assert ch.recv(timeout=5) is None
    assert ch.wait(timeout=5).verdict is Verdict.TIMEOUT


def test_channel_kill_and_timeout(sandbox):
    ch = sandbox.start("import time; time.sleep(30)", Limits(wall_s=20))
    with pytest.raises(TimeoutError):
        ch.recv(timeout=0.2)
    t0 = time.monotonic()
    r = ch.kill()
    assert time.monotonic() - t0 < 3
    assert r.verdict is Verdict.KILLED, r


def test_channel_program_errors_and_garbage(sandbox):
    ch = sandbox.start("from mx_envs.sandbox import channel\nchannel.send({'x': 1})\nraise KeyError('k')")
    assert ch.recv(timeout=5) == {"x": 1}
    assert ch.recv(timeout=5) is None
    r = ch.wait(timeout=5)
    assert r.verdict is Verdict.RUNTIME_ERROR and "KeyError" in r.stderr
    ch = sandbox.start("import os, time; os.write(int(os.environ['MX_CHANNEL_FD']), b'not json\\n'); time.sleep(9)")
    from mx_envs.sandbox import ChannelClosed

    with pytest.raises(ChannelClosed):
        ch.recv(timeout=5)
    assert ch.wait(timeout=5).verdict is Verdict.KILLED


def test_channel_unavailable_under_run(sandbox):
    r = sandbox.run("from mx_envs.sandbox import channel\nchannel.send({'x': 1})")
    assert r.verdict is Verdict.RUNTIME_ERROR and "ChannelUnavailable" in r.stderr


def test_concurrent_runs_from_threads(sandbox):
    results: dict[int, str] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for j in range(3):
                r = sandbox.run(f"import sys; print({i} * 100 + {j}, sys.stdin.read())", stdin=str(i))
                assert r.verdict is Verdict.OK, r
                results[i * 100 + j] = r.stdout
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert results == {i * 100 + j: f"{i * 100 + j} {i}\n" for i in range(6) for j in range(3)}


def test_server_death_is_recovered():
    sb = ProcessSandbox(preload=(), pool_size=1)
    try:
        assert sb.run("print(1)").stdout == "1\n"
        pid = sb.server_pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
        r = sb.run("print(2)")
        assert r.verdict is Verdict.OK and r.stdout == "2\n", r
        assert sb.server_pid not in (None, pid)
    finally:
        sb.close()
    assert sb.run("print(1)").verdict is Verdict.SANDBOX_ERROR  # closed


def test_preload_is_configurable_and_shared_pool():
    sb = ProcessSandbox(preload=(), extra_preload=("json", "no_such_module_xyz"), pool_size=1)
    try:
        r = sb.run("import sys; print('json' in sys.modules, 'sympy' in sys.modules)")
        assert r.stdout == "True False\n", r
        assert r.isolation["preloaded"] == ["json"]
    finally:
        sb.close()
    a = get_sandbox("process", preload=(), pool_size=1)
    assert get_sandbox("process", preload=(), pool_size=1) is a
    assert default_sandbox() is default_sandbox()
    with pytest.raises(ValueError):
        get_sandbox("nope")


def test_cli_exec_json(tmp_path, capsys):
    from mx_train.cli import main

    prog = tmp_path / "p.py"
    prog.write_text("import sys; print(sys.stdin.read().strip()[::-1])")
    stdin = tmp_path / "in.txt"
    stdin.write_text("abc\n")
    rc = main(["sandbox", "exec", str(prog), "--stdin", str(stdin), "--json", "--no-preload", "--timeout", "5"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["verdict"] == "ok" and out["stdout"] == "cba\n" and out["exit_code"] == 0
    assert {"verdict", "exit_code", "stdout", "stderr", "wall_s"} <= set(out)
    prog.write_text("while True: pass")
    rc = main(["sandbox", "exec", str(prog), "--json", "--no-preload", "--timeout", "1"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 1 and out["verdict"] == "timeout"
    rc = main(["sandbox", "exec", str(tmp_path / "missing.py")])
    assert rc == 2


def test_pool_grows_while_runs_stay_suspended():
    """More suspended channel runs than warm supervisors (MAS scripts waiting for LLM replies): every
    run still starts at once, because the server adds supervisors when none is idle."""
    from mx_envs.sandbox import ProcessSandbox
    from mx_envs.sandbox.api import Limits

    src = "from mx_envs.sandbox import channel\nreply = channel.request({'hello': 1})\nprint(reply['n'])\n"
    with ProcessSandbox(preload=(), pool_size=2, max_pool_size=16) as sb:
        chans = [sb.start(src, Limits(wall_s=30)) for _ in range(8)]
        for ch in chans:  # all 8 reach their request although only 2 supervisors were warm
            assert ch.recv(timeout=20) == {"hello": 1}
        for i, ch in enumerate(chans):
            ch.send({"n": i})
        results = [ch.wait(timeout=20) for ch in chans]
    assert [r.stdout.strip() for r in results] == [str(i) for i in range(8)]
    assert all(r.ok for r in results)


def test_channel_hold_pauses_the_wall_clock_until_the_first_send(sandbox):
    src = "from mx_envs.sandbox import channel\nprint(channel.recv())"
    ch = sandbox.start(src, Limits(wall_s=1))
    ch.hold()  # started ahead of time: its wall clock waits for the first message
    time.sleep(1.5)
    ch.send({"a": 1})
    r = ch.wait(timeout=10)
    assert r.verdict is Verdict.OK and r.stdout == "{'a': 1}\n", r
    ch = sandbox.start(src, Limits(wall_s=1))  # not held: the same wait is a timeout
    time.sleep(1.5)
    assert ch.wait(timeout=10).verdict is Verdict.TIMEOUT


def test_session_prestarts_the_next_script_process(sandbox):
    """A MAS session keeps the next episode's script process started (held), uses it on the next
    start, and kills it on close."""
    from mx_envs.mas.protocol import Finished, LLMRequest, TerminationReason
    from mx_envs.mas.session import PRELOAD, MASSession

    sb = ProcessSandbox(extra_preload=PRELOAD, pool_size=2)
    try:
        design = "```python\ndef forward(task):\n    return Agent('solver')(task)\n```"
        session = MASSession(sandbox=sb)
        assert isinstance(session.start(design, "q1"), LLMRequest)
        spare = session._spare[0]
        fin = session.reply("\\boxed{1}")
        assert isinstance(fin, Finished) and fin.reason is TerminationReason.COMPLETED, fin
        time.sleep(1.5)  # longer than nothing: the held spare must not time out meanwhile
        assert isinstance(session.start(design, "q2"), LLMRequest)
        assert session._channel is spare  # the spare became this episode's script process
        fin = session.reply("\\boxed{2}")
        assert fin.answer_text == "\\boxed{2}", fin
        nxt = session._spare[0]
        session.close()
        assert session._spare is None and nxt.wait(timeout=10).verdict is Verdict.KILLED
        assert MASSession(sandbox=sb, prestart=False)._spare is None
    finally:
        sb.close()
