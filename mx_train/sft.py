"""Supervised fine-tuning (cold start): next-token NLL on responses, prompts masked out.

Examples come from a JSONL file (one object per line, any of these shapes)::

    {"prompt_ids": [...], "response_ids": [...], "loss_mask": [...]?}        # token ids
    {"messages": [{"role": ..., "content": ...}, ...], "response": "..."}   # chat prompt + reply
    {"prompt": "...", "response": "..."}                                     # plain text

or from rollout transitions with a positive reward (rejection sampling:
:func:`examples_from_transitions`; transition JSONL lines are accepted by :func:`load_sft_jsonl` too,
filtered by ``min_reward``). Chat prompts are rendered with the tokenizer's chat template and the
generation prompt; the response is followed by the EOS token so the model learns to stop.

Training reuses :class:`mx_train.learner.Learner` (its token-budget micro-batching, gradient
accumulation, clipping, AdamW and schedule) through ``Learner.sft_step``.

The trainer's cold start (``warm_start:`` of a training config) pairs designer prompts of training
tasks with the fenced source of library designs (:func:`design_examples`) and mixes them with SFT
data in balanced batches (:func:`warm_start_batch`).
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mx_train.learner import Learner


@dataclass
class SFTExample:
    """A (prompt, response) pair as token ids; only response tokens with mask 1 are trained."""

    prompt_ids: list[int]
    response_ids: list[int]
    loss_mask: list[int] | None = None
    # Fields the learner reads from transitions; constant for SFT.
    logprobs: list[float] | None = None
    advantage: float = 0.0
    role: str = "sft"
    # SFT trains the model's own distribution: its tokens are scored at temperature 1.
    metadata: dict[str, Any] = field(default_factory=lambda: {"temperature": 1.0})


def _encode_text(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _response_ids(tokenizer: Any, response: str) -> list[int]:
    ids = _encode_text(tokenizer, response)
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    return ids


def example_from_record(rec: dict[str, Any], tokenizer: Any = None, where: str = "") -> SFTExample:
    """One :class:`SFTExample` from a JSON object of a supported shape (see module doc)."""
    if "prompt_ids" in rec and "response_ids" in rec:
        return SFTExample([int(x) for x in rec["prompt_ids"]], [int(x) for x in rec["response_ids"]], rec.get("loss_mask"))
    if tokenizer is None:
        raise ValueError(f"{where}: text examples need a tokenizer (give --model)")
    if "messages" in rec and "response" in rec:
        prompt = tokenizer.apply_chat_template(rec["messages"], add_generation_prompt=True, tokenize=False)
        return SFTExample(_encode_text(tokenizer, prompt), _response_ids(tokenizer, str(rec["response"])))
    if "prompt" in rec and "response" in rec:
        return SFTExample(_encode_text(tokenizer, str(rec["prompt"])), _response_ids(tokenizer, str(rec["response"])))
    raise ValueError(
        f"{where}: unsupported SFT record with keys {sorted(rec)}; expected prompt_ids+response_ids, "
        "messages+response or prompt+response"
    )


def load_sft_jsonl(
    path: str | os.PathLike[str], tokenizer: Any = None, *, min_reward: float | None = 0.0
) -> list[SFTExample]:
    """Read examples from JSONL. Records carrying a ``reward`` (e.g. transitions) are kept only when
    ``reward > min_reward`` (``min_reward=None`` keeps all). Empty responses are dropped."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"SFT data file not found: {p}")
    out: list[SFTExample] = []
    with open(p) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{p}:{lineno}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: invalid JSON ({exc})") from exc
            if not isinstance(rec, dict):
                raise ValueError(f"{where}: expected a JSON object")
            if min_reward is not None and "reward" in rec and not float(rec["reward"]) > min_reward:
                continue
            ex = example_from_record(rec, tokenizer, where)
            if ex.response_ids:
                out.append(ex)
    return out


def examples_from_transitions(
    transitions: Iterable[Any], *, min_reward: float = 0.0, roles: Sequence[str] | None = None
) -> list[SFTExample]:
    """Rejection sampling: the turns of episodes that earned ``reward > min_reward``."""
    keep = None if roles is None else set(roles)
    return [
        SFTExample(list(t.prompt_ids), list(t.response_ids), t.loss_mask)
        for t in transitions
        if t.reward > min_reward and (keep is None or t.role in keep) and t.response_ids
    ]


def train_sft(
    learner: Learner,
    examples: Sequence[SFTExample],
    *,
    epochs: int = 1,
    batch_size: int = 8,
    rng: random.Random | None = None,
    on_step: Any = None,
) -> list[dict[str, float]]:
    """``epochs`` passes over ``examples`` in shuffled batches of ``batch_size`` sequences, one
    optimizer step per batch. ``on_step(step, metrics)`` is called after each. Returns the metrics."""
    if not examples:
        raise ValueError("no SFT examples to train on")
    if epochs < 1 or batch_size < 1:
        raise ValueError("epochs and batch_size must be >= 1")
    rng = rng or random.Random(0)
    history = []
    step = 0
    for epoch in range(epochs):
        order = list(range(len(examples)))
        rng.shuffle(order)
        for start in range(0, len(order), batch_size):
            batch = [examples[i] for i in order[start : start + batch_size]]
            m = learner.sft_step(batch)
            m["epoch"] = float(epoch)
            history.append(m)
            if on_step is not None:
                on_step(step, m)
            step += 1
    return history


def design_examples(
    designs: Sequence[str], prompts: Sequence[list[dict[str, Any]]], tokenizer: Any
) -> dict[str, list[SFTExample]]:
    """Design -> one example per designer prompt (chat messages) whose response is the design's fenced
    source. A design is inline script text (defining ``forward``), a script file or a library name."""
    from mx_agents.policies.fixed import fence
    from mx_envs.mas.designs import load_design

    out: dict[str, list[SFTExample]] = {}
    for name in designs:
        if "def forward" in name:
            source = name
        elif Path(name).is_file():
            source = Path(name).read_text(encoding="utf-8")
        else:
            source = load_design(name)
        out[name] = [example_from_record({"messages": messages, "response": fence(source)}, tokenizer,
                                         where=f"warm start ({name})") for messages in prompts]
    return out


def warm_start_batch(per_design: dict[str, list[Any]], data: list[Any], size: int, k: int, rng: random.Random) -> list[Any]:
    """Cold-start batch ``k``: every design once, on the same training prompt, then SFT data.

    Every step pushes each design's script equally for one prompt, so the cold-start designer samples
    them about equally often. Random batches are not balanced, and the last few steps decide which
    design it prefers (one run's designer wrote ``single`` in 5 of its first 6 designs), which can
    leave a run whose designs and executor never match (reward 0 everywhere: no signal to learn from).
    """
    designs = [ex for ex in per_design.values() if ex]
    batch = [ex[k % len(ex)] for ex in designs][:size]
    room = size - len(batch)
    if data and room > 0:
        batch += rng.sample(data, min(room, len(data)))
    elif room > 0 and designs:  # no SFT data: more prompts of every design
        pool = [e for ex in designs for e in ex]
        batch += rng.sample(pool, min(room, len(pool)))
    return batch
