"""Config loading: typed validation from the dataclass annotations, key paths, did-you-mean, --set, plugins."""

from __future__ import annotations

import dataclasses
import textwrap
from dataclasses import dataclass, field

import pytest

from mx_envs.errors import ConfigError, UnknownName, UnknownOption
from mx_train.config import TrainConfig, _build, apply_overrides


def test_registry_typo_is_located_and_suggested_at_load_time() -> None:
    with pytest.raises(UnknownName) as err:
        TrainConfig.from_dict({"learner": {"policy_loss": "ppo_clipp"}})  # no validate(): at load
    assert str(err.value).startswith("learner.policy_loss: unknown policy loss 'ppo_clipp'; did you mean 'ppo_clip'?")
    assert err.value.key == "learner.policy_loss" and err.value.suggestions == ["ppo_clip"]
    assert isinstance(err.value, KeyError) and isinstance(err.value, ValueError)  # old excepts still work
    with pytest.raises(ConfigError, match=r"^algorithm.estimator: unknown advantage estimator 'grpoo'; did you mean 'grpo'"):
        TrainConfig.from_dict({"algorithm": {"estimator": "grpoo"}})
    with pytest.raises(ConfigError, match=r"^schedule.mode: unknown co-evolution mode 'stagwise'; did you mean 'stagewise'"):
        TrainConfig.from_dict({"schedule": {"mode": "stagwise"}})
    with pytest.raises(ConfigError, match=r"^rollout: unknown key 'desings'; did you mean 'designs'"):
        TrainConfig.from_dict({"rollout": {"desings": 3}})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"max_steps": "3"}, "max_steps: expected an integer, got the string '3'"),
        ({"max_steps": 2.5}, "max_steps: expected an integer"),
        ({"tensorboard": "yes"}, "tensorboard: expected true/false"),
        ({"rollout": {"designer": {"temperature": "hot"}}}, "rollout.designer.temperature: expected a number"),
        ({"learner": {"lr": [1]}}, "learner.lr: expected a number"),
        ({"learner": {"betas": [0.9]}}, "learner.betas: expected a list of 2 items"),
        ({"warm_start": {"designs": "single"}}, "warm_start.designs: expected a list"),
        ({"env": {"kwargs": []}}, "env.kwargs: expected a mapping"),
        ({"rollout": 3}, "rollout: expected a mapping"),
    ],
)
def test_wrong_types_fail_at_load_with_the_key(data, message) -> None:
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_dict(data)
    assert str(err.value).startswith(message), str(err.value)


def test_numbers_are_normalised() -> None:
    cfg = TrainConfig.from_dict({"learner": {"lr": "1e-5", "betas": [0.9, 0.95]},
                                 "rollout": {"designer": {"temperature": 1}}})
    assert cfg.rollout.designer.temperature == 1.0 and isinstance(cfg.rollout.designer.temperature, float)
    assert cfg.learner.lr == 1e-5 and cfg.learner.betas == (0.9, 0.95)  # YAML's unquoted 1e-5 is a str


@dataclass
class Inner:
    k: int = 1


@dataclass
class Added:
    """Stands for a config section someone adds later (types resolved like TrainConfig's)."""

    count: int = 0
    names: list[str] = field(default_factory=list)
    inner: Inner = field(default_factory=Inner)
    maybe: float | None = None


def test_new_dataclass_fields_are_validated_without_extra_code() -> None:
    """The loader derives the types from the annotations: a field someone adds is checked at once."""
    ok = _build(Added, {"count": 2, "names": ["a"], "inner": {"k": 3}, "maybe": 1}, "added")
    assert ok == Added(2, ["a"], Inner(3), 1.0)
    for bad, where in [({"count": "2"}, "added.count"), ({"names": ["a", 1]}, "added.names[1]"),
                       ({"inner": {"k": "x"}}, "added.inner.k"), ({"maybe": "x"}, "added.maybe")]:
        with pytest.raises(ConfigError) as err:
            _build(Added, bad, "added")
        assert err.value.key == where
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    assert {"plugins", "full_save_every"} <= names


def test_set_overrides_parse_yaml_values() -> None:
    data = {"rollout": {"designs": 4}}
    out = apply_overrides(data, ["rollout.designs=2", "learner.lr=1e-5", "warm_start.designs=[single, vote]",
                                 "env.kwargs.loader_kwargs.level=3", "wandb=null"])
    assert data == {"rollout": {"designs": 4}}  # the input is not modified
    assert out["rollout"]["designs"] == 2 and out["warm_start"]["designs"] == ["single", "vote"]
    assert out["env"]["kwargs"]["loader_kwargs"] == {"level": 3} and out["wandb"] is None
    cfg = TrainConfig.from_dict(data, overrides=["rollout.designs=2", "max_steps=7"])
    assert cfg.rollout.designs == 2 and cfg.max_steps == 7
    with pytest.raises(ConfigError, match="did you mean 'designs'"):
        TrainConfig.from_dict({}, overrides=["rollout.designz=2"])
    with pytest.raises(ConfigError, match="max_steps: expected an integer"):
        TrainConfig.from_dict({}, overrides=["max_steps=three"])
    with pytest.raises(ConfigError, match="KEY.PATH=VALUE"):
        apply_overrides({}, ["max_steps"])
    # Sampling ranges are checked at load, with the key path, not at the first generation.
    cfg = TrainConfig.from_dict({}, overrides=["rollout.designer.max_prompt_tokens=8192"])
    assert cfg.rollout.designer.params().max_prompt_tokens == 8192
    for bad in ("rollout.executor.max_prompt_tokens=0", "rollout.designer.top_p=0"):
        with pytest.raises(ConfigError, match=r"^rollout\.(executor|designer): (max_prompt_tokens|top_p) must"):
            TrainConfig.from_dict({}, overrides=[bad]).validate()
    with pytest.raises(ConfigError, match="^max_steps: is int, not a mapping"):
        apply_overrides({"max_steps": 3}, ["max_steps.x=1"])


def test_env_ids_kwargs_loader_options_and_splits_are_checked_at_load() -> None:
    with pytest.raises(UnknownName, match=r"^env.id: unknown env id 'MetaAgentX-Arithmetik-v0'; did you mean 'MetaAgentX-Arithmetic-v0'"):
        TrainConfig.from_dict({"env": {"id": "MetaAgentX-Arithmetik-v0"}})
    with pytest.raises(UnknownOption, match=r"^env.kwargs: unknown env keyword 'data_pth'; did you mean 'data_path'"):
        TrainConfig.from_dict({"env": {"kwargs": {"data_pth": "x"}}})
    with pytest.raises(UnknownOption, match=r"^env.kwargs.loader_kwargs: unknown option 'levle'; did you mean 'level'"):
        TrainConfig.from_dict({"env": {"kwargs": {"loader_kwargs": {"levle": 2}}}})
    with pytest.raises(ConfigError, match=r"^env.split: dataset 'aime24' has no split 'train'; its splits: test"):
        TrainConfig.from_dict({"env": {"id": "MetaAgentX-AIME24-v0", "split": "train"}})


def test_plugin_registers_an_estimator_used_by_the_config(tmp_path) -> None:
    plugin = tmp_path / "my_estimator.py"
    plugin.write_text(textwrap.dedent("""
        from mx_train.advantages import ADVANTAGE_ESTIMATORS, grpo

        if "test_plugin_est" not in ADVANTAGE_ESTIMATORS:
            ADVANTAGE_ESTIMATORS.register("test_plugin_est")(grpo)
    """))
    with pytest.raises(ConfigError, match="test_plugin_est"):
        TrainConfig.from_dict({"algorithm": {"estimator": "test_plugin_est"}})
    cfg = TrainConfig.from_dict({"algorithm": {"estimator": "test_plugin_est"}}, plugins=[str(plugin)])
    assert cfg.plugins == [str(plugin)]
    cfg = TrainConfig.from_dict({"plugins": [str(plugin)], "algorithm": {"estimator": "test_plugin_est"}})
    with pytest.raises(ConfigError, match=r"^plugins\[0\]: plugin module 'no_such_plugin_mod' not found"):
        TrainConfig.from_dict({"plugins": ["no_such_plugin_mod"]})
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(ConfigError, match="failed on import: RuntimeError: boom"):
        TrainConfig.from_dict({}, plugins=[str(broken)])


def test_mx_train_reports_a_mistake_in_one_line(tmp_path, capsys) -> None:
    from mx_train.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text("max_steps: 1\nlearner: {policy_loss: ppo_clipp}\n")
    assert main(["train", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("mx train: learner.policy_loss: unknown policy loss 'ppo_clipp'; did you mean 'ppo_clip'? "
                   "known: pg, ppo_clip") or err.startswith("mx train: learner.policy_loss: unknown policy loss 'ppo_clipp'; did you mean 'ppo_clip'?")
    assert "\n" not in err
    assert main(["train", "--config", str(cfg), "--set", "learner.policy_loss=pg", "--set", "max_steps=x"]) == 2
    assert capsys.readouterr().err.strip() == "mx train: max_steps: expected an integer, got the string 'x'"
    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    (tmp_path / "bad.yaml").write_text("max_steps: [1\n")
    assert main(["train", "--config", str(tmp_path / "bad.yaml")]) == 2
    assert "not valid YAML" in capsys.readouterr().err


def test_plugin_registers_a_dataset_the_env_uses(tmp_path) -> None:
    plugin = tmp_path / "my_dataset.py"
    plugin.write_text(textwrap.dedent("""
        from mx_envs.tasks.math_datasets import math_task
        from mx_envs.tasks.registry import DatasetSpec, register

        register(DatasetSpec("test_plugin_math", "math", "train", math_task, "rows via data_path",
                             options=("flavour",), splits=("train",)))
    """))
    data = tmp_path / "rows.jsonl"
    data.write_text('{"problem": "1+1?", "answer": "2"}\n')
    env = {"id": "MetaAgentX-Arithmetic-v0", "kwargs": {"dataset": "test_plugin_math", "data_path": str(data)}}
    with pytest.raises(ConfigError, match=r"unknown dataset 'test_plugin_math'"):
        TrainConfig.from_dict({"env": env})
    cfg = TrainConfig.from_dict({"env": env}, plugins=[str(plugin)])
    with pytest.raises(ConfigError, match=r"^env.kwargs: unknown env keyword 'flavor'; did you mean 'flavour'"):
        TrainConfig.from_dict({"env": {**env, "kwargs": {**env["kwargs"], "flavor": 1}}}, plugins=[str(plugin)])
    import gymnasium as gym

    made = gym.make(cfg.env.id, **cfg.env.kwargs)
    assert [t.answer for t in made.unwrapped.tasks] == ["2"] and made.unwrapped.tasks[0].dataset == "test_plugin_math"
    made.close()


def test_retired_learner_temperature_is_accepted_only_where_it_repeats_the_rollout_temperatures() -> None:
    """Each turn is scored at the temperature on its transition; ``learner.temperature`` of older
    configs is ignored (with a warning) when it says the same as the rollout, an error otherwise."""
    with pytest.warns(UserWarning, match="learner.temperature is ignored"):
        cfg = TrainConfig.from_dict({"learner": {"lr": 1e-5, "temperature": 1.0}})
    assert not hasattr(cfg.learner, "temperature") and cfg.learner.lr == 1e-5
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_dict({"learner": {"temperature": 0.7}, "rollout": {"executor": {"temperature": 0.7}}})
    assert "learner.temperature" in str(err.value) and "recorded on its transition" in str(err.value)
