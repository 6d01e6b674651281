"""``rollout.fixed_design`` with a warm start: the cold start pairs the prompts the LLM designer would
have been sent with the warm-start designs (it crashed: 'FixedDesigner' object has no attribute
'build_request'), and training then plays the fixed design."""

from __future__ import annotations

from pathlib import Path

import pytest

from mx_train.config import TrainConfig

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "smoke_cpu.yaml"
SYSTEM = "Write a MAS script."  # smoke_cpu.yaml's designer_prompt.system_prompt


def _turn():
    from mx_agents.observation import ActorTurn

    return ActorTurn(role="designer", agent="designer",
                     messages=[{"role": "system", "content": "the env's API reference"},
                               {"role": "user", "content": "What is 2 + 3?"}])


def test_fixed_designer_builds_the_llm_designers_request():
    from mx_agents.policies.fixed import FixedDesigner
    from mx_train.assembly import build_rollout_policy

    cfg = TrainConfig.from_yaml(SMOKE, overrides=["rollout.fixed_design=single"])

    class _Backend:  # request building never generates
        name = "none"

    backend = _Backend()
    policy = build_rollout_policy({"designer": backend, "executor": backend}, cfg, step=0)
    assert isinstance(policy.designer, FixedDesigner)
    request = policy.designer.build_request(_turn())
    assert request.messages[0] == {"role": "system", "content": SYSTEM}  # the designer prompt applied
    assert request.messages[-1]["content"] == "What is 2 + 3?"
    bare = FixedDesigner("single").build_request(_turn())  # no LLM designer to stand in for
    assert [m["content"] for m in bare.messages] == ["the env's API reference", "What is 2 + 3?"]
    with pytest.raises(ValueError, match="designer turns"):
        from mx_agents.observation import ActorTurn

        FixedDesigner("single").build_request(ActorTurn(role="executor", agent="solver", messages=[]))


@pytest.mark.slow
def test_fixed_design_with_warm_start_trains(tmp_path):
    from mx_train.trainer import Trainer

    cfg = TrainConfig.from_yaml(SMOKE, overrides=["rollout.fixed_design=single", "max_steps=1",
                                                  f"out={tmp_path / 'run'}"])
    cfg.validate()
    trainer = Trainer(cfg, progress=False)
    try:
        history = trainer.run()
    finally:
        trainer.close()
    assert len(history) == 1
    import json

    warm = (tmp_path / "run" / "warm_start.jsonl").read_text().splitlines()
    assert len(warm) == cfg.warm_start.steps  # the cold start ran under the fixed design

    shard = (tmp_path / "run" / "transitions" / "step_00000000.jsonl").read_text().splitlines()
    roles = {json.loads(line)["role"] for line in shard}
    assert roles == {"executor"}  # the fixed design makes no designer turns
