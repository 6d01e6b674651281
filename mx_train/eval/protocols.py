"""Evaluation presets: which benchmarks, splits, slices, samples and sampling a named protocol uses.

``paper`` (``mx eval --protocol paper``) is the MetaAgent-X evaluation as this project reads it:

===================  ===========================================================================
benchmark            tasks
===================  ===========================================================================
LiveCodeBench        ``code_generation_lite`` **v6 window** (``test6.jsonl``: the problems added in
                     release v6, not the cumulative ``release_v6``); ``--lcb-version release_v6``
                     (cumulative) or any other tag selects another set
APPS                 test split, first 100 problems
CodeContests         test split, first 100 problems
AIME24, AIME25       all 30 problems each
OlympiadBench        first 100 problems (English, text-only math)
===================  ===========================================================================

Samples and sampling: one sample per task (the paper's reported figures are multiples of 1/100 on the
100-problem slices and of 1/30 on AIME, i.e. pass@1 of one sample); temperature 1.0, top-p 0.9,
top-k 20, repetition penalty 1.1 for both roles (the paper's designer sampling; executors as the
designer); up to 8192 new
tokens per reply. The 100-problem slices and the executor's sampling are this project's reading of the
paper's figures, not settings it states. The paper's 8192-token prompt limit is a training setting
(configs/paper_*.yaml); evaluation does not cut prompts.

Data: every benchmark loads from ``MX_DATA_DIR`` or the Hugging Face hub (APPS, CodeContests test and
LiveCodeBench need the hub on these machines); ``--env-arg fixture=true`` runs the same protocol on the
packaged fixture rows (CPU smoke test).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Protocol:
    name: str
    envs: dict[str, dict[str, Any]]  # env id -> gym.make kwargs
    limits: dict[str, int | None]  # env id -> first N tasks (None: all)
    samples: int
    temperature: float
    top_p: float
    top_k: int
    max_new_tokens: int
    repetition_penalty: float = 1.0
    notes: list[str] = field(default_factory=list)


def paper_protocol(lcb_version: str = "v6") -> Protocol:
    """The ``paper`` preset (see the module docstring); ``lcb_version`` picks LiveCodeBench's set."""
    return Protocol(
        name="paper",
        envs={
            "MetaAgentX-LiveCodeBench-v0": {"split": "test", "loader_kwargs": {"version": lcb_version}},
            "MetaAgentX-APPS-v0": {"split": "test"},
            "MetaAgentX-CodeContests-v0": {"split": "test"},
            "MetaAgentX-AIME24-v0": {"split": "test"},
            "MetaAgentX-AIME25-v0": {"split": "test"},
            "MetaAgentX-OlympiadBench-v0": {"split": "test"},
        },
        limits={
            "MetaAgentX-LiveCodeBench-v0": None,
            "MetaAgentX-APPS-v0": 100,
            "MetaAgentX-CodeContests-v0": 100,
            "MetaAgentX-AIME24-v0": None,
            "MetaAgentX-AIME25-v0": None,
            "MetaAgentX-OlympiadBench-v0": 100,
        },
        samples=1,
        temperature=1.0,
        top_p=0.9,
        top_k=20,
        max_new_tokens=8192,
        repetition_penalty=1.1,
        notes=[f"LiveCodeBench version {lcb_version!r}"],
    )


PROTOCOLS = {"paper": paper_protocol}


def get_protocol(name: str, **options: Any) -> Protocol:
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; known: {', '.join(sorted(PROTOCOLS))}")
    return PROTOCOLS[name](**options)


def apply_sampling(policy: Any, *, top_p: float | None = None, top_k: int | None = None,
                   repetition_penalty: float | None = None) -> None:
    """Set top-p/top-k/repetition penalty on every LLM role of ``policy`` (fixed designers and rule
    policies have none)."""
    import dataclasses

    overrides = {k: v for k, v in (("top_p", top_p), ("top_k", top_k), ("repetition_penalty", repetition_penalty))
                 if v is not None}
    if not overrides:
        return
    for role in (policy, getattr(policy, "designer", None), getattr(policy, "executor", None)):
        params = getattr(role, "params", None)
        if params is not None and dataclasses.is_dataclass(params):
            role.params = dataclasses.replace(params, **overrides)
