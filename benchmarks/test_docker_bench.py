"""Docker backend beside the process backend, same session: ``print(1)`` latency and 4-way throughput.

Run: ``.venv/bin/pytest benchmarks/test_docker_bench.py --benchmark-only`` (needs a Docker daemon:
``dockerd``; the image ``mx-sandbox:latest`` is built offline on first use). ``mx bench`` pairs each
Docker benchmark with its process-backend twin (ratio < 1: Docker is slower, as expected of a fresh
container per run). ``extra_info`` carries ``p50_ms`` and ``runs_per_s``.
"""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from mx_envs.sandbox import Limits, ProcessSandbox, Verdict

PRINT1 = "print(1)"
LIMITS = Limits(wall_s=60)
CONCURRENCY = 4


@pytest.fixture(scope="module")
def docker_sb():
    pytest.importorskip("docker", reason="docker SDK (docker extra) not installed")
    from mx_envs.sandbox.docker_backend import DockerSandbox, DockerUnavailable

    try:
        sb = DockerSandbox()
    except DockerUnavailable as exc:
        pytest.skip(f"no Docker daemon (dockerd): {exc}")
    assert sb.run(PRINT1, limits=LIMITS).stdout == "1\n"  # warm: image layers and daemon caches
    yield sb
    sb.close()


@pytest.fixture(scope="module")
def process_sb():
    sb = ProcessSandbox(preload=(), pool_size=CONCURRENCY)
    sb.warm_up()
    for _ in range(5):
        sb.run(PRINT1)
    yield sb
    sb.close()


def _print1(sb) -> None:
    r = sb.run(PRINT1, "", LIMITS)
    assert r.verdict is Verdict.OK and r.stdout == "1\n", r


def _latency(benchmark, sb, rounds: int) -> None:
    times: list[float] = []

    def one() -> None:
        t0 = time.perf_counter()
        _print1(sb)
        times.append(time.perf_counter() - t0)

    benchmark.pedantic(one, rounds=rounds, iterations=1)
    benchmark.extra_info["p50_ms"] = round(1000 * statistics.median(times), 2)


def _throughput(benchmark, sb, runs: int) -> None:
    rates: list[float] = []

    def batch() -> None:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(CONCURRENCY) as ex:
            list(ex.map(lambda _: _print1(sb), range(runs)))
        rates.append(runs / (time.perf_counter() - t0))

    benchmark.pedantic(batch, rounds=2, iterations=1)
    benchmark.extra_info["runs_per_s"] = round(statistics.median(rates), 2)
    benchmark.extra_info["concurrency"] = CONCURRENCY


def test_process_print1(benchmark, process_sb, bench_quick):
    _latency(benchmark, process_sb, 20 if bench_quick else 60)


def test_docker_print1(benchmark, docker_sb, bench_quick):
    benchmark.extra_info["baseline"] = "test_process_print1"
    _latency(benchmark, docker_sb, 6 if bench_quick else 20)


def test_docker_print1_spaced(benchmark, docker_sb, bench_quick):
    """Runs 1.5 s apart (e.g. one candidate program per LLM generation): each one finds a started
    container waiting (``warm=1``), so it pays for the program, not for container start."""
    benchmark.extra_info["baseline"] = "test_docker_print1"
    times: list[float] = []

    def one() -> None:
        t0 = time.perf_counter()
        _print1(docker_sb)
        times.append(time.perf_counter() - t0)

    benchmark.pedantic(one, setup=lambda: time.sleep(1.5), rounds=5 if bench_quick else 15, iterations=1)
    benchmark.extra_info["p50_ms"] = round(1000 * statistics.median(times), 2)


def test_process_concurrent4(benchmark, process_sb, bench_quick):
    _throughput(benchmark, process_sb, 32 if bench_quick else 128)


def test_docker_concurrent4(benchmark, docker_sb, bench_quick):
    benchmark.extra_info["baseline"] = "test_process_concurrent4"
    _throughput(benchmark, docker_sb, 8 if bench_quick else 24)
