"""Per-run latency: warm sandbox pool vs a cold ``subprocess.run([python, file])``, same session.

Run: ``.venv/bin/pytest benchmarks/test_sandbox_bench.py --benchmark-only``; compare medians.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from mx_envs.sandbox import Limits, ProcessSandbox, Verdict

PRINT1 = "print(1)"
SYMPY = "import sympy\nx = sympy.symbols('x')\nprint(sympy.factor(x**2 - 1))"
EXPECTED = {PRINT1: "1\n", SYMPY: "(x - 1)*(x + 1)\n"}


@pytest.fixture(scope="module")
def pool():
    sb = ProcessSandbox(pool_size=2)
    sb.warm_up()
    for _ in range(5):
        sb.run(PRINT1)
    yield sb
    sb.close()


@pytest.mark.parametrize("name,source", [("print1", PRINT1), ("sympy", SYMPY)])
def test_warm_pool(benchmark, pool, name, source):
    limits = Limits(wall_s=30)
    benchmark.extra_info["baseline"] = "test_cold_subprocess"  # mx bench pairing (benchmarks/README.md)
    r = benchmark(pool.run, source, "", limits)
    assert r.verdict is Verdict.OK and r.stdout == EXPECTED[source], r


@pytest.mark.parametrize("name,source", [("print1", PRINT1), ("sympy", SYMPY)])
def test_warm_pool_spaced(benchmark, pool, name, source):
    """One call on a pool whose children are ready (runs 30 ms apart, as tool calls between LLM turns).

    Back-to-back runs (``test_warm_pool``) also pay for re-forking children on the shared cores.
    """
    limits = Limits(wall_s=30)
    benchmark.extra_info["baseline"] = "test_cold_subprocess"
    r = benchmark.pedantic(pool.run, (source, "", limits), setup=lambda: time.sleep(0.03), rounds=60)
    assert r.verdict is Verdict.OK and r.stdout == EXPECTED[source], r


@pytest.mark.parametrize("name,source", [("print1", PRINT1), ("sympy", SYMPY)])
def test_cold_subprocess(benchmark, tmp_path, name, source):
    path = tmp_path / "prog.py"
    path.write_text(source)

    def cold() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=60)

    rounds = 20 if name == "print1" else 6
    r = benchmark.pedantic(cold, rounds=rounds, iterations=1)
    assert r.returncode == 0 and r.stdout == EXPECTED[source]


def test_channel_round_trip(benchmark, pool):
    """One request/reply over the host channel of a ``start``-ed program."""
    src = "from mx_envs.sandbox import channel\nwhile not channel.request({'q': 1}).get('stop'):\n    pass"
    ch = pool.start(src, Limits(wall_s=120))

    def round_trip() -> None:
        ch.recv(timeout=10)
        ch.send({"stop": False})

    benchmark(round_trip)
    ch.recv(timeout=10)
    ch.send({"stop": True})
    assert ch.wait(timeout=10).verdict is Verdict.OK
