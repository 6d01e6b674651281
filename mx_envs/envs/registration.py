"""The env ids, registered with gymnasium on ``import mx_envs`` (string entry points: nothing heavy).

Every id makes a :class:`~mx_envs.envs.meta_env.MetaAgentXEnv` over one dataset of
:func:`mx_envs.tasks.load_tasks`; keyword arguments of ``gym.make`` go to the env (``split``,
``data_path``, ``fixture``, ``limit``, ``budgets``, reward shaping, ...).
"""

from __future__ import annotations

from dataclasses import dataclass

ENTRY_POINT = "mx_envs.envs.meta_env:MetaAgentXEnv"


@dataclass(frozen=True)
class EnvEntry:
    env_id: str
    dataset: str  # name for mx_envs.tasks.load_tasks
    kind: str  # "math" or "code"
    description: str


ENVS: tuple[EnvEntry, ...] = (
    EnvEntry("MetaAgentX-AIME-v0", "aime", "math", "AIME 2024 + 2025 (60 problems, integer answers)"),
    EnvEntry("MetaAgentX-AIME24-v0", "aime24", "math", "AIME 2024 I+II"),
    EnvEntry("MetaAgentX-AIME25-v0", "aime25", "math", "AIME 2025 I+II"),
    EnvEntry("MetaAgentX-OlympiadBench-v0", "olympiadbench", "math", "OlympiadBench, English text-only math"),
    EnvEntry("MetaAgentX-MATH500-v0", "math500", "math", "MATH-500"),
    EnvEntry("MetaAgentX-GSM8K-v0", "gsm8k", "math", "GSM8K"),
    EnvEntry("MetaAgentX-Arithmetic-v0", "arithmetic", "math", "generated arithmetic problems (no data needed)"),
    EnvEntry("MetaAgentX-LiveCodeBench-v0", "livecodebench", "code", "LiveCodeBench code_generation_lite"),
    EnvEntry("MetaAgentX-APPS-v0", "apps", "code", "APPS"),
    EnvEntry("MetaAgentX-CodeContests-v0", "codecontests", "code", "DeepMind CodeContests"),
    EnvEntry("MetaAgentX-HumanEval-v0", "humaneval", "code", "OpenAI HumanEval"),
    EnvEntry("MetaAgentX-MBPP-v0", "mbpp", "code", "Google MBPP (assert tests)"),
    EnvEntry("MetaAgentX-MBPPPlus-v0", "mbppplus", "code", "MBPP+ (EvalPlus: base + extra inputs)"),
)

ENV_IDS: tuple[str, ...] = tuple(e.env_id for e in ENVS)


def check_env_id(env_id: str, *, key: str | None = None) -> None:
    """Raise :class:`~mx_envs.errors.UnknownName` (with the closest ids) unless ``env_id`` is registered
    with gymnasium (ours or any other); call before starting work that would fail on it later."""
    import importlib

    from gymnasium.envs.registration import registry

    from mx_envs.errors import unknown_name

    register_envs()
    module, _, name = str(env_id).rpartition(":")  # gym.make's "module:Id" form imports the module first
    if module:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise unknown_name("env module", module, [], key=key).__class__(
                f"cannot import the module of env id {env_id!r}: {exc}", key=key) from None
    if name in registry:
        return
    raise unknown_name("env id", env_id, ENV_IDS, key=key)


def register_envs() -> None:
    """Register every id once (re-registering would make gymnasium warn about overriding)."""
    from gymnasium.envs.registration import register, registry

    for entry in ENVS:
        if entry.env_id not in registry:
            register(id=entry.env_id, entry_point=ENTRY_POINT, kwargs={"dataset": entry.dataset})
