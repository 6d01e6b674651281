"""Per-run latency: warm sandbox pool vs a cold ``subprocess.run([python, file])``, same session.

Run: ``.venv/bin/pytest benchmarks/test_sandbox_bench.py --benchmark-only``; compare medians.
``test_concurrent_16`` puts 16 threads on one pool (throughput in ``extra_info["runs_per_s"]``);
``extra_info["request_setup_ms"]`` is the per-run cost of the cgroup limits and of the uid switch,
``no_new_privs`` and seccomp filter, as measured inside the sandbox (median over the rounds).
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


def _setup_ms(results: list) -> dict[str, float]:
    keys = sorted({k for r in results for k in r.isolation.get("request_setup_ms", {})})
    out = {}
    for k in keys:
        vals = sorted(r.isolation["request_setup_ms"].get(k, 0.0) for r in results)
        out[k] = round(vals[len(vals) // 2], 3)
    return out


@pytest.mark.parametrize("name,source", [("print1", PRINT1), ("sympy", SYMPY)])
def test_warm_pool(benchmark, pool, name, source):
    limits = Limits(wall_s=30)
    benchmark.extra_info["baseline"] = "test_cold_subprocess"  # mx bench pairing (benchmarks/README.md)
    results: list = []

    def one():
        r = pool.run(source, "", limits)
        results.append(r)
        return r

    r = benchmark(one)
    assert r.verdict is Verdict.OK and r.stdout == EXPECTED[source], r
    benchmark.extra_info["request_setup_ms"] = _setup_ms(results)
    benchmark.extra_info["isolation"] = {k: r.isolation.get(k) for k in ("cgroup", "pid_ns", "seccomp")}


def test_concurrent_16(benchmark, bench_quick):
    """16 threads, each running ``print(1)`` back to back on one pool (its default size)."""
    from concurrent.futures import ThreadPoolExecutor

    per_thread = 3 if bench_quick else 6
    with ProcessSandbox() as sb, ThreadPoolExecutor(16) as ex:
        sb.warm_up()
        list(ex.map(lambda _: sb.run(PRINT1), range(32)))  # grow the pool to its working size

        def burst() -> list:
            return list(ex.map(lambda _: sb.run(PRINT1), range(16 * per_thread)))

        results = benchmark.pedantic(burst, rounds=3, iterations=1)
        assert all(r.verdict is Verdict.OK and r.stdout == "1\n" for r in results)
    benchmark.extra_info["runs_per_burst"] = 16 * per_thread
    benchmark.extra_info["runs_per_s"] = round(16 * per_thread / benchmark.stats.stats.median, 1)


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
