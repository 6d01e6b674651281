"""Registration of the env ids, gymnasium's check_env on every id, and `mx envs`."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env

import mx_envs  # noqa: F401  (registers the ids)
from mx_envs.envs.registration import ENTRY_POINT, ENV_IDS, ENVS
from mx_envs.tasks import load_tasks

REPO = Path(__file__).resolve().parents[3]

EXPECTED_IDS = {
    "MetaAgentX-AIME-v0", "MetaAgentX-AIME24-v0", "MetaAgentX-AIME25-v0", "MetaAgentX-OlympiadBench-v0",
    "MetaAgentX-MATH500-v0", "MetaAgentX-GSM8K-v0", "MetaAgentX-Arithmetic-v0", "MetaAgentX-LiveCodeBench-v0",
    "MetaAgentX-APPS-v0", "MetaAgentX-CodeContests-v0", "MetaAgentX-HumanEval-v0", "MetaAgentX-MBPP-v0",
    "MetaAgentX-MBPPPlus-v0",
}


def test_every_id_is_registered_with_a_string_entry_point() -> None:
    assert set(ENV_IDS) == EXPECTED_IDS
    for env_id in ENV_IDS:
        spec = gym.spec(env_id)
        assert spec.entry_point == ENTRY_POINT and isinstance(spec.entry_point, str)


def test_import_is_cheap_and_make_works_without_prior_import() -> None:
    code = (
        "import sys, gymnasium as gym\n"
        "import mx_envs\n"
        "heavy = [m for m in ('torch', 'transformers', 'sympy', 'math_verify', 'datasets', "
        "'mx_envs.envs.meta_env', 'mx_envs.sandbox.process') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "del sys.modules['mx_envs']\n"
        "for k in [k for k in gym.registry if k.startswith('MetaAgentX')]: del gym.registry[k]\n"
        "env = gym.make('mx_envs:MetaAgentX-Arithmetic-v0', limit=3)\n"
        "obs, info = env.reset(seed=0)\n"
        "print(info['task_id'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("arithmetic/")


def test_every_env_has_fixture_data() -> None:
    """check_env below runs every id on its packaged fixture rows: none may be missing (no skips)."""
    for entry in ENVS:
        assert len(load_tasks(entry.dataset, fixture=True)) >= 1, entry.env_id


@pytest.mark.parametrize("entry", ENVS, ids=[e.env_id for e in ENVS])
def test_check_env_passes_for_every_id(entry) -> None:
    env = gym.make(entry.env_id, fixture=True)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            check_env(env.unwrapped)
        messages = [str(w.message) for w in caught if "gymnasium" in str(w.filename) or "env_checker" in str(w.message)]
        assert not messages, messages
        obs, info = env.reset(seed=0)
        assert info["kind"] == entry.kind
        assert env.observation_space.contains(obs)
    finally:
        env.close()


def test_mx_envs_cli_json(capsys) -> None:
    from mx_train.cli import main

    assert main(["envs", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["envs"]
    assert [r["env_id"] for r in rows] == list(ENV_IDS)
    arith = next(r for r in rows if r["env_id"] == "MetaAgentX-Arithmetic-v0")
    assert arith["tasks"] and arith["tasks"] > 0
    assert all(r["tasks"] is None or r["tasks"] > 0 for r in rows)
    assert all(r["note"] for r in rows if r["tasks"] is None)
    assert main(["envs"]) == 0
    assert "MetaAgentX-AIME-v0" in capsys.readouterr().out


def test_data_path_and_loader_options_reach_every_loader(tmp_path) -> None:
    """gym.make(..., data_path=, loader_kwargs=) reaches the dataset loader, AIME (two datasets) included."""
    rows = [{"problem": f"p{i}", "answer": str(i), "id": f"x{i}"} for i in range(3)]
    data = tmp_path / "mine.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for entry in ENVS:
        if entry.kind != "math" or entry.dataset == "arithmetic":
            continue
        split = "train" if entry.dataset == "polaris" else None
        env = gym.make(entry.env_id, data_path=str(data), **({"split": split} if split else {}))
        try:
            tasks = env.unwrapped.tasks
            assert [t.answer for t in tasks] == ["0", "1", "2"], entry.env_id
            assert tasks[0].id.startswith(f"{entry.dataset}/"), tasks[0].id
        finally:
            env.close()
    lcb = gym.make("MetaAgentX-LiveCodeBench-v0", fixture=True, loader_kwargs={"start_date": "2024-01-01"})
    assert len(lcb.unwrapped.tasks) == 1 < len(load_tasks("livecodebench", fixture=True))
    lcb.close()
    arith = gym.make("MetaAgentX-Arithmetic-v0", loader_kwargs={"level": 4, "n": 7})
    assert len(arith.unwrapped.tasks) == 7 and arith.unwrapped.tasks[0].metadata["level"] == 4
    arith.close()


def test_splits_are_honoured_and_mistakes_are_config_errors() -> None:
    from mx_envs.errors import ConfigError

    for env_id in ("MetaAgentX-AIME-v0", "MetaAgentX-AIME24-v0", "MetaAgentX-MATH500-v0", "MetaAgentX-HumanEval-v0"):
        with pytest.raises(ConfigError, match=r"has no split 'train'; its splits: test"):
            gym.make(env_id, fixture=True, split="train")
    with pytest.raises(ConfigError, match=r"no split 'tset'; its splits: train, test"):
        gym.make("MetaAgentX-GSM8K-v0", fixture=True, split="tset")
    assert gym.make("MetaAgentX-GSM8K-v0", fixture=True, split="train").unwrapped.tasks[0].split == "train"
    with pytest.raises(ConfigError, match=r"^load_tasks\('arithmetic'\): unknown option 'levle'; did you mean 'level'"):
        gym.make("MetaAgentX-Arithmetic-v0", loader_kwargs={"levle": 2})
    # The dataset's options work as gym.make keywords too; anything else names the closest keyword.
    env = gym.make("MetaAgentX-Arithmetic-v0", level=4, n=5)
    assert len(env.unwrapped.tasks) == 5 and env.unwrapped.tasks[0].metadata["level"] == 4
    env.close()
    with pytest.raises(ConfigError, match=r"^unknown env keyword 'data_pth'; did you mean 'data_path'"):
        gym.make("MetaAgentX-AIME-v0", data_pth="x.jsonl")
    with pytest.raises(ConfigError, match=r"^unknown env keyword 'levle'; did you mean 'level'"):
        gym.make("MetaAgentX-Arithmetic-v0", levle=4)
