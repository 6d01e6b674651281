"""``mx eval --protocol paper`` settings, and checkpoints evaluated with the prompt/sampling they trained with."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from mx_train.eval.protocols import apply_sampling, get_protocol


def _eval_args(*argv: str) -> argparse.Namespace:
    from mx_train.cli.eval import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser.parse_args(["eval", "--policy", "scripted", *argv])


def test_paper_protocol_fills_envs_slices_and_sampling():
    from mx_train.cli.eval import _config

    args = _eval_args("--protocol", "paper")
    cfg = _config(args, [], "scripted", None)
    proto = get_protocol("paper")
    assert cfg.env_ids == list(proto.envs) and len(cfg.env_ids) == 6
    assert cfg.per_env_kwargs["MetaAgentX-LiveCodeBench-v0"]["loader_kwargs"] == {"version": "v6"}
    assert cfg.per_env_kwargs["MetaAgentX-APPS-v0"]["split"] == "test"
    assert cfg.per_env_limit["MetaAgentX-APPS-v0"] == 100 and cfg.per_env_limit["MetaAgentX-AIME24-v0"] is None
    assert (cfg.samples, cfg.temperature, cfg.top_p, cfg.top_k, cfg.max_new_tokens) == (1, 1.0, 0.9, 20, 8192)
    # cumulative LiveCodeBench, a subset of envs, a CPU slice and explicit overrides
    args = _eval_args("--protocol", "paper", "--lcb-version", "release_v6", "--limit", "2", "--samples", "3")
    cfg = _config(args, ["MetaAgentX-LiveCodeBench-v0", "MetaAgentX-APPS-v0"], "scripted", None)
    assert cfg.per_env_kwargs["MetaAgentX-LiveCodeBench-v0"]["loader_kwargs"] == {"version": "release_v6"}
    assert cfg.per_env_limit == {"MetaAgentX-LiveCodeBench-v0": 2, "MetaAgentX-APPS-v0": 2} and cfg.samples == 3
    with pytest.raises(ValueError, match="not in protocol"):
        _config(_eval_args("--protocol", "paper"), ["MetaAgentX-GSM8K-v0"], "scripted", None)


def test_apply_sampling_reaches_every_llm_role():
    from mx_agents.backends.base import SamplingParams

    class Role:
        params = SamplingParams(top_p=1.0, top_k=0)

    class Routed:
        designer, executor = Role(), Role()

    pol = Routed()
    pol.designer, pol.executor = Role(), Role()
    apply_sampling(pol, top_p=0.9, top_k=20)
    assert (pol.designer.params.top_p, pol.executor.params.top_k) == (0.9, 20)


def test_checkpoint_carries_prompt_and_sampling_and_eval_plays_them(tmp_path: Path):
    pytest.importorskip("torch")
    from mx_agents.backends.hf import HFBackend
    from mx_agents.testing import tiny_llama
    from mx_train.config import TrainConfig
    from mx_train.eval.trained_settings import build_trained_policy, trained_settings
    from mx_train.trainer import Trainer
    from tests.mx_train.scripted_env import ScriptedTwoLevelEnv

    cfg = TrainConfig.from_dict({
        "max_steps": 1, "out": str(tmp_path / "run"), "tensorboard": False,
        "rollout": {"tasks_per_step": 1, "designs": 2, "executions": 1,
                    "designer": {"temperature": 0.7, "top_p": 0.9, "top_k": 20, "max_new_tokens": 6},
                    "executor": {"temperature": 0.5, "max_new_tokens": 5},
                    "designer_prompt": {"system_prompt": "COMPACT API"}},
        "learner": {"lr": 1e-3, "micro_batch_tokens": 512, "device": "cpu"},
        "schedule": {"mode": "joint"},
    })

    def make(spec: str):
        model, tok = tiny_llama(seed=0)
        return HFBackend(model, tok, device="cpu", dtype="float32")

    Trainer(cfg, env_factory=ScriptedTwoLevelEnv, backend_factory=make, progress=False).run()
    run = tmp_path / "run"
    settings = trained_settings(str(run))
    assert settings is not None and settings["designer_prompt"] == {"system_prompt": "COMPACT API"}
    assert (settings["designer"]["top_k"], settings["executor"]["temperature"]) == (20, 0.5)
    ckpt = sorted((run / "checkpoints").iterdir())[-1]
    assert trained_settings(str(ckpt / "models" / "policy"))["source"] == str(ckpt / "trainer_state.json")
    assert trained_settings(str(tmp_path)) is None  # not a run: nothing applied

    policy, applied = build_trained_policy(str(run), None, temperature=0.3, backend_factory=make)
    assert policy.designer.prompt.system_prompt == "COMPACT API"
    assert (policy.designer.params.top_p, policy.designer.params.top_k) == (0.9, 20)
    assert policy.designer.params.temperature == 0.3 == policy.executor.params.temperature  # CLI wins
    assert policy.executor.params.max_new_tokens == 5
    assert json.loads(json.dumps(applied))["designer_prompt"] == {"system_prompt": "COMPACT API"}
    assert build_trained_policy("default", None, backend_factory=make) is None
