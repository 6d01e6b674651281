"""MAS session host overhead: per-LLM-turn round trip and episode start, warm sandbox vs cold process.

``warm``: the real :class:`~mx_envs.sandbox.process.ProcessSandbox` (the script library
preloaded in its fork server). ``cold``: the naive way, a fresh ``python`` subprocess per
episode with the channel on pipes (the test double ``PipeSandbox``: no isolation at all).
A turn is ``session.reply(text)`` until the script's next request: send the reply, the script
appends it to its agent's history and asks again, the host validates the request.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "mx_envs" / "mas"))
from mas_doubles import PipeSandbox  # noqa: E402

from mx_envs.mas.protocol import Budgets, Finished, LLMRequest  # noqa: E402
from mx_envs.mas.session import MASSession, default_mas_sandbox  # noqa: E402

LOOP = "```python\ndef forward(task):\n    a = Agent('solver', system='Solve.')\n    while True:\n        a.reset()\n        a(task)\n```"
SINGLE = "```python\ndef forward(task):\n    return Agent('solver')(task)\n```"
TURNS = 200


@pytest.fixture(scope="module", params=["warm", "cold"])
def sandbox(request):
    if request.param == "cold":
        return PipeSandbox()
    sb = default_mas_sandbox()
    sb.warm_up()
    return sb


def test_turn_overhead(benchmark, sandbox):
    session = MASSession(sandbox=sandbox, budgets=Budgets(max_llm_calls=TURNS + 10))
    benchmark.group = "mas-turn"  # mx bench pairing (benchmarks/README.md): cold is the naive way
    benchmark.extra_info["naive"] = isinstance(sandbox, PipeSandbox)
    out = session.start(LOOP, "What is 6 * 7?")
    assert isinstance(out, LLMRequest)
    # a short reply so the history (and each request) stays small and comparable
    benchmark.pedantic(lambda: session.reply("ok"), rounds=TURNS, iterations=1, warmup_rounds=5)
    assert isinstance(session.pending, LLMRequest)
    session.close()


def test_episode_start(benchmark, sandbox):
    session = MASSession(sandbox=sandbox)
    benchmark.group = "mas-episode-start"
    benchmark.extra_info["naive"] = isinstance(sandbox, PipeSandbox)

    def episode():
        out = session.start(SINGLE, "What is 6 * 7?")
        assert isinstance(out, LLMRequest)
        fin = session.reply(r"\boxed{42}")
        assert isinstance(fin, Finished) and fin.answer == r"\boxed{42}"

    benchmark.pedantic(episode, rounds=20, iterations=1, warmup_rounds=2)
