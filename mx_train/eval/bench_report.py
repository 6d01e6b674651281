"""Run the benchmark suites (:func:`run_benchmarks`), read a pytest-benchmark JSON report and tabulate
each benchmark against its naive baseline.

The pairing convention (documented in ``benchmarks/README.md``), in order of precedence:

1. ``benchmark.extra_info["baseline"] = "test_name"``: the benchmark is compared with the test of
   that name (with its parameters, e.g. ``"test_grade_naive[64]"``, or without: then the baseline's
   parameters must equal this benchmark's), looked up in the same module first;
2. otherwise, in a pytest-benchmark *group*, the benchmark whose ``extra_info["naive"]`` is true is
   the baseline of every other member of the group.

``speedup = baseline mean time / benchmark mean time`` (> 1: faster than the naive way). A
benchmark with neither is listed without a ratio; a named baseline that did not run (deselected
with ``-k``) gives no ratio and is said so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class BenchRow:
    module: str
    name: str
    group: str
    mean_s: float
    stddev_s: float
    rounds: int
    is_baseline: bool = False
    baseline: str = ""  # the naive benchmark's name, when paired
    speedup: float | None = None
    note: str = ""


def _module(fullname: str) -> str:
    return fullname.split("::", 1)[0]


def _params_suffix(name: str) -> str:
    return name[name.index("[") :] if "[" in name else ""


def _find(benches: list[dict[str, Any]], wanted: str, module: str, params: str) -> dict[str, Any] | None:
    names = [wanted] if "[" in wanted else [wanted + params, wanted]
    for candidate in names:
        for scope in (module, None):
            for b in benches:
                if b["name"] == candidate and (scope is None or _module(b["fullname"]) == scope):
                    return b
    return None


def pair_benchmarks(report: dict[str, Any]) -> list[BenchRow]:
    """One row per benchmark in ``report`` (pytest-benchmark's JSON), with speedups where paired."""
    benches: list[dict[str, Any]] = list(report.get("benchmarks", []))
    naive_of_group: dict[str, dict[str, Any]] = {}
    for b in benches:
        if (b.get("extra_info") or {}).get("naive") and b.get("group"):
            naive_of_group.setdefault(b["group"], b)
    used_as_baseline: set[str] = set()
    rows: list[BenchRow] = []
    for b in benches:
        info = b.get("extra_info") or {}
        stats = b["stats"]
        row = BenchRow(
            module=_module(b["fullname"]),
            name=b["name"],
            group=b.get("group") or "",
            mean_s=float(stats["mean"]),
            stddev_s=float(stats.get("stddev", 0.0)),
            rounds=int(stats.get("rounds", 0)),
        )
        base: dict[str, Any] | None = None
        if info.get("baseline"):
            base = _find(benches, str(info["baseline"]), row.module, _params_suffix(row.name))
            if base is None:
                row.note = f"baseline {info['baseline']!r} did not run"
        elif row.group in naive_of_group and naive_of_group[row.group] is not b:
            base = naive_of_group[row.group]
        if base is not None and base is not b:
            row.baseline = base["name"]
            row.speedup = float(base["stats"]["mean"]) / row.mean_s if row.mean_s > 0 else None
            used_as_baseline.add(base["fullname"])
        rows.append(row)
    for b, row in zip(benches, rows, strict=True):
        if b["fullname"] in used_as_baseline or (b.get("extra_info") or {}).get("naive"):
            row.is_baseline = True
    return rows


def _fmt_time(s: float) -> str:
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.1f} us"


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def format_table(rows: list[BenchRow], markdown: bool = False) -> str:
    """Rows as a text (or markdown) table: module, benchmark, mean, rounds, baseline, speedup."""
    header = ["suite", "benchmark", "mean", "rounds", "vs naive baseline", "speedup"]
    body = []
    for r in rows:
        base = r.baseline
        if base and _params_suffix(base) == _params_suffix(r.name):
            base = base.split("[", 1)[0]  # same parameters as the row: the name says enough
        vs = "(naive baseline)" if r.is_baseline and not r.baseline else base or r.note or "-"
        body.append([
            Path(r.module).stem.removeprefix("test_").removesuffix("_bench"),
            _clip(r.name.replace("\\n", " "), 56),
            _fmt_time(r.mean_s),
            str(r.rounds),
            vs,
            f"{r.speedup:.2f}x" if r.speedup is not None else "",
        ])
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|---|---|---:|---:|---|---:|"]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body]
        return "\n".join(lines)
    widths = [max(len(h), *(len(row[i]) for row in body)) if body else len(h) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*row) for row in body]
    return "\n".join(out)


def load_report(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read benchmark report {path}: {exc}") from None
    if not isinstance(data, dict) or "benchmarks" not in data:
        raise ValueError(f"{path} is not a pytest-benchmark JSON report (no 'benchmarks' key)")
    return data


def run_benchmarks(
    bench_dir: Path, *, quick: bool = False, keyword: str | None = None, pytest_args: list[str] | None = None,
    json_out: Path | None = None,
) -> tuple[int, dict[str, Any] | None]:
    """``pytest BENCH_DIR --benchmark-only`` in a child process with a JSON report; returns pytest's exit
    code (1: a benchmark failed, 5: nothing collected) and the report (``None`` when none was written).
    ``quick``: few rounds, short max time, no warmup, and ``MX_BENCH_QUICK=1`` so suites shrink inputs;
    ``json_out``: also keep the report there."""
    import os
    import shutil
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory(prefix="mx-bench-") as tmp:
        json_path = Path(tmp) / "bench.json"
        cmd = [sys.executable, "-m", "pytest", str(bench_dir), "--benchmark-only",
               f"--benchmark-json={json_path}", "-q", "-p", "no:cacheprovider", "--benchmark-disable-gc",
               "--benchmark-columns=mean,stddev,rounds"]
        env = dict(os.environ)
        if quick:
            cmd += ["--benchmark-min-rounds=2", "--benchmark-max-time=0.2", "--benchmark-warmup=off"]
            env["MX_BENCH_QUICK"] = "1"
        if keyword:
            cmd += ["-k", keyword]
        cmd += list(pytest_args or [])
        print("$ " + " ".join(cmd), flush=True)
        rc = subprocess.call(cmd, env=env)
        if not json_path.is_file():
            return rc, None
        if json_out is not None:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(json_path, json_out)
        return rc, load_report(json_path)
