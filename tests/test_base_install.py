"""``pip install metaagentx`` without extras: the env suite works and torch is never needed.

The base install (setup.cfg ``install_requires``) holds the envs, graders, sandbox, MAS runtime, the
OpenAI-compatible backend and rollouts; torch, transformers and the rest come with extras. The slow
test builds a venv holding the project and its base requirements only (pip resolves them), then plays
``MetaAgentX-AIME-v0`` (packaged fixture rows) and ``MetaAgentX-Arithmetic-v0`` episodes in it with a
scripted policy and with the OpenAI-compatible backend against :class:`SolverServerDouble`. The fast
tests check, in the full venv where torch *is* installed, that importing the base modules does not
load it, and that the extras table of :mod:`mx_envs.errors` matches setup.cfg.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mx_envs.errors import OPTIONAL_PACKAGES, missing_extra
from tests.mx_agents.backends.openai_double import ChatServerDouble

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "accelerate", "matplotlib", "tensorboard", "vllm", "ray")


def _requirement_name(line: str) -> str:
    """``stable-baselines3>=2.3`` -> ``stable_baselines3`` (the normalised distribution name)."""
    return re.split(r"[\[<>=!~; ]", line.strip(), maxsplit=1)[0].lower().replace("-", "_")


def _setup_cfg() -> tuple[list[str], dict[str, list[str]]]:
    """(base requirements, extra -> requirements with the ``metaagentx[...]`` self-references expanded)."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")

    def lines(text: str) -> list[str]:
        return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]

    base = lines(cfg["options"]["install_requires"])
    raw = {name: lines(value) for name, value in cfg["options.extras_require"].items()}

    def expand(extra: str, seen: frozenset[str] = frozenset()) -> list[str]:
        assert extra not in seen, f"extras refer to each other in a circle through {extra!r}"
        out: list[str] = []
        for req in raw[extra]:
            ref = re.fullmatch(r"metaagentx\[([\w,\- ]+)\]", req)
            if ref:
                for sub in ref.group(1).split(","):
                    out += expand(sub.strip(), seen | {extra})
            else:
                out.append(req)
        return out

    return base, {name: expand(name) for name in raw}


def test_optional_packages_match_setup_cfg() -> None:
    base, extras = _setup_cfg()
    base_names = {_requirement_name(r) for r in base}
    assert not base_names & {*OPTIONAL_PACKAGES, *HEAVY}, base_names & {*OPTIONAL_PACKAGES, *HEAVY}
    for module, extra in OPTIONAL_PACKAGES.items():
        assert extra in extras, f"OPTIONAL_PACKAGES[{module!r}] names {extra!r}, not an extra of setup.cfg"
        assert module in {_requirement_name(r) for r in extras[extra]}, (module, extra, extras[extra])
    # `make install` installs .[all,dev]: every extra that runs on CPU is inside `all`.
    in_all = {_requirement_name(r) for r in extras["all"]}
    for name, reqs in extras.items():
        if name not in ("all", "dev", "vllm", "gpu", "vllm-cpu"):
            assert {_requirement_name(r) for r in reqs} <= in_all, name
    assert 'install -q -e ".[all,dev]"' in (ROOT / "Makefile").read_text()


def test_missing_extra_message() -> None:
    assert missing_extra(ModuleNotFoundError("No module named 'torch'", name="torch")) == (
        "this needs the 'torch' package, which the base install leaves out; "
        "install the extra: pip install 'metaagentx[hf]'")
    # a command that needs the training extra names it rather than `hf`
    assert "metaagentx[train]'" in missing_extra(ModuleNotFoundError(name="torch.nn"), prefer="train")
    assert "metaagentx[dist]'" in missing_extra(ModuleNotFoundError(name="ray"), prefer="train")
    # not an optional package: a bug, left to propagate with its traceback
    assert missing_extra(ModuleNotFoundError(name="mx_agents.nope")) is None
    assert missing_extra(ImportError("cannot import name 'x'", name="torch")) is None


def test_cli_reports_registered_errors_and_missing_extras(capsys: pytest.CaptureFixture[str]) -> None:
    """mx_agents registers BackendError with mx_envs.errors (which does not import mx_agents)."""
    from mx_agents.backends.base import BackendError
    from mx_envs.errors import run_cli, user_errors

    assert BackendError in user_errors()

    def server_down() -> int:
        raise BackendError("backend 'openai' failed: ConnectError")

    def no_torch() -> int:
        raise ModuleNotFoundError("No module named 'torch'", name="torch")

    assert run_cli("mx eval", server_down) == 2
    assert run_cli("mx train", no_torch, extra="train") == 2
    assert capsys.readouterr().err.splitlines() == [
        "mx eval: backend 'openai' failed: ConnectError",
        "mx train: this needs the 'torch' package, which the base install leaves out; "
        "install the extra: pip install 'metaagentx[train]'"]
    with pytest.raises(ModuleNotFoundError):  # a module of ours missing is a bug: traceback
        run_cli("mx eval", lambda: __import__("mx_agents.no_such_module"))


def test_base_modules_do_not_import_torch() -> None:
    """In the full venv (torch installed, so an import of it would succeed silently): ``import mx_envs``,
    then every module of mx_envs, the mx_agents modules of the base flows, the ``mx`` parser and an
    Arithmetic episode's reset load none of the heavy packages."""
    code = textwrap.dedent(f"""
        import importlib, pkgutil, sys
        import mx_envs
        after_envs = sorted(m for m in {HEAVY!r} if m in sys.modules)
        for info in pkgutil.walk_packages(mx_envs.__path__, "mx_envs."):
            if not info.name.startswith("mx_envs.mas.designs."):  # design scripts, run by the MAS runtime
                importlib.import_module(info.name)
        import gymnasium as gym
        import mx_agents.backends.openai_http, mx_agents.policies.spec, mx_agents.rollout, mx_agents.cli
        import mx_train.cli
        mx_train.cli.build_parser()
        env = gym.make("MetaAgentX-Arithmetic-v0")
        env.reset(seed=0)
        env.close()
        print(after_envs, sorted(m for m in {HEAVY!r} if m in sys.modules))
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[] []", proc.stdout


# --- the base venv ----------------------------------------------------------------------------------

DESIGN = """```python
def forward(task):
    solvers = [Agent(f"solver{i}", system="Solve step by step; end with \\\\boxed{answer}.") for i in range(2)]
    return final_answer(ensemble(solvers, task, aggregate="vote"))
```"""


class SolverServerDouble(ChatServerDouble):
    """A test double of an OpenAI-compatible chat server on 127.0.0.1 (:class:`ChatServerDouble`, no model)
    that plays a plain server (no token ids, no logprobs) and solves by lookup.

    A designer request (its chat states the ``forward(task)`` contract) gets :data:`DESIGN`, a
    two-solver vote; any other request whose last user message holds one of ``answers``' problem texts
    gets ``\\boxed{answer}``, else ``\\boxed{0}``. Requests are recorded.
    """

    def __init__(self, answers: dict[str, str]) -> None:
        super().__init__(token_ids=False, logprobs=False)
        self.answers = answers

    def reply_text(self, messages: list[dict[str, str]]) -> str:
        if any("forward(task)" in m["content"] for m in messages):
            return DESIGN
        last = [m["content"] for m in messages if m["role"] == "user"][-1]
        answer = next((a for problem, a in self.answers.items() if problem in last), "0")
        return f"The answer is \\boxed{{{answer}}}."


# Runs inside the base venv: scripted episodes, then `mx episode` against the server, in one process so
# that sys.modules covers all of it. Writes its findings to argv[2] (stdout is `mx episode --json`'s).
CHILD = r'''
import importlib.util, json, sys

report = {"torch_installed": importlib.util.find_spec("torch") is not None}
import mx_envs  # noqa: E402
report["torch_after_import"] = "torch" in sys.modules
import gymnasium as gym  # noqa: E402
from mx_agents.policies.scripted import ScriptedPolicy  # noqa: E402
from mx_envs.tasks import load_tasks  # noqa: E402

answers = {t.prompt: str(t.answer) for t in load_tasks("aime", fixture=True)}
design = sys.argv[3]

def solve(turn):
    last = turn.messages[-1]["content"]
    return next((f"\\boxed{{{a}}}" for p, a in answers.items() if p in last), None)

def play(env, policy, seed):
    obs, info = env.reset(seed=seed)
    terminated = truncated = False
    while not (terminated or truncated):
        action = policy.act([obs])[0]
        obs, reward, terminated, truncated, info = env.step(action.text)
    return {"reward": float(reward), "correct": info["correct"], "reason": info["termination_reason"],
            "task": info.get("task_id"), "agents": sorted(info["trajectories"])}

right = ScriptedPolicy(design=design, fn=solve)
wrong = ScriptedPolicy(design=design, default="\\boxed{1}")
env = gym.make("MetaAgentX-AIME-v0", fixture=True)
report["aime_right"] = [play(env, right, seed) for seed in range(2)]
report["aime_wrong"] = play(env, wrong, 0)
env.close()
arith = gym.make("MetaAgentX-Arithmetic-v0")
report["arithmetic"] = play(arith, ScriptedPolicy(design=design, default="\\boxed{0}"), 0)
arith.close()

from mx_train.cli import main  # noqa: E402
report["episode_rc"] = main(["episode", "MetaAgentX-AIME-v0", "--env-kwarg", "fixture=true", "--seed", "1",
                             "--policy", sys.argv[1], "--json"])
report["heavy_loaded"] = sorted(m for m in ("torch", "transformers", "accelerate", "matplotlib") if m in sys.modules)
with open(sys.argv[2], "w") as f:
    json.dump(report, f)
'''


@pytest.fixture(scope="module")
def base_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with ``pip install -e ROOT`` and nothing else (the base requirements pip resolves)."""
    venv = tmp_path_factory.mktemp("base") / "venv"
    # No pip inside the venv (ensurepip alone takes ~10 s): this venv's pip installs into it (--python).
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    # --no-compile: sympy & co. are not byte-compiled up front (halves the install time).
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-compile",
                           "--disable-pip-version-check", "-e", str(ROOT)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return python


def _child_env(venv_python: Path) -> dict[str, str]:
    """The children's environment: no data dir (fixture rows only), no PYTHONPATH; byte code (not
    compiled at install) is written once under the venv's folder and reused by the later children."""
    drop = ("MX_DATA_DIR", "PYTHONPATH", "VIRTUAL_ENV", "PYTHONDONTWRITEBYTECODE")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    return {**env, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPYCACHEPREFIX": str(venv_python.parents[1] / "pycache")}


@pytest.mark.slow
def test_base_install_plays_episodes(base_python: Path, tmp_path: Path) -> None:
    from mx_envs.tasks import load_tasks

    answers = {t.prompt: str(t.answer) for t in load_tasks("aime", fixture=True)}
    script, out = tmp_path / "child.py", tmp_path / "report.json"
    script.write_text(CHILD)
    with SolverServerDouble(answers) as server:
        proc = subprocess.run([str(base_python), str(script), server.base_url, str(out), DESIGN],
                              cwd=tmp_path, env=_child_env(base_python), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-5000:]
    report = json.loads(out.read_text())
    assert report["torch_installed"] is False  # the base requirements do not pull torch in
    assert report["torch_after_import"] is False and report["heavy_loaded"] == []
    for ep in report["aime_right"]:
        assert (ep["reward"], ep["correct"], ep["reason"]) == (1.0, True, "completed"), ep
        assert ep["agents"] == ["solver0", "solver1"], ep
    assert len({ep["task"] for ep in report["aime_right"]}) == 2, report["aime_right"]
    assert (report["aime_wrong"]["reward"], report["aime_wrong"]["correct"]) == (0.0, False), report["aime_wrong"]
    assert report["arithmetic"]["reason"] == "completed", report["arithmetic"]

    # the OpenAI-compatible backend: the designer and both solvers were served by the double
    assert report["episode_rc"] == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["correct"] is True and summary["reward"] == 1.0, summary
    assert summary["design_valid"] is True and summary["llm_calls"] == 3, summary  # designer + 2 solvers
    assert len(server.requests) == 3, [r["messages"][-1]["content"][:80] for r in server.requests]


@pytest.mark.slow
def test_base_install_cli(base_python: Path, tmp_path: Path) -> None:
    """`mx` starts without torch; a command that needs it names the extra in one line (exit status 2)."""
    mx = base_python.parent / "mx"
    help_ = subprocess.run([str(mx), "--help"], capture_output=True, text=True, timeout=120, env=_child_env(base_python))
    assert help_.returncode == 0 and "episode" in help_.stdout and "train" in help_.stdout, help_.stderr[-2000:]
    for argv, extra in ((["train", "--config", str(ROOT / "configs" / "demo_cpu.yaml"), "--max-steps", "1",
                          "--out", str(tmp_path / "run")], "train"),
                        (["episode", "MetaAgentX-Arithmetic-v0", "--policy", "default"], "hf")):
        proc = subprocess.run([str(mx), *argv], capture_output=True, text=True, timeout=120, env=_child_env(base_python))
        assert proc.returncode == 2, (argv, proc.stderr[-3000:])
        assert proc.stderr.strip().splitlines() == [
            f"mx {argv[0]}: this needs the 'torch' package, which the base install leaves out; "
            f"install the extra: pip install 'metaagentx[{extra}]'"], proc.stderr[-3000:]
