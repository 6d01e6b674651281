"""LLMText and the observation layout: real LLM text fits, sampling is seeded, vector utilities work."""

from __future__ import annotations

import multiprocessing as mp

import numpy as np
import pytest
from gymnasium.error import CustomSpaceError
from gymnasium.vector.utils import (
    batch_space,
    concatenate,
    create_empty_array,
    create_shared_memory,
)

from mx_envs.envs.observation import (
    DESIGNER,
    EXECUTOR,
    decode_messages,
    make_observation,
    observation_space,
    terminal_observation,
)
from mx_envs.envs.spaces import LLMText

REAL_TEXT = [
    "",
    "```python\ndef forward(task):\n    return task\n```",
    "The answer is $\\boxed{\\frac{1}{2}}$ since $x \\le 3$.",
    "Ünïcödé ∑∫ 漢字 🙂 \t\r\n\x00",
]


@pytest.mark.parametrize("text", REAL_TEXT)
def test_llm_text_accepts_real_llm_output(text: str) -> None:
    assert LLMText(1000).contains(text)


def test_llm_text_bounds_and_types() -> None:
    space = LLMText(5, min_length=1)
    assert not space.contains("")
    assert not space.contains("x" * 6)
    assert not space.contains(b"abc")
    assert not space.contains(None)
    with pytest.raises(ValueError):
        LLMText(5, sample_max_length=-1)


def test_llm_text_sample_is_seeded_and_varied() -> None:
    a, b = LLMText(10_000, seed=7), LLMText(10_000, seed=7)
    xs = [a.sample() for _ in range(50)]
    assert xs == [b.sample() for _ in range(50)]
    assert all(a.contains(x) for x in xs)
    assert max(len(x) for x in xs) <= 256
    joined = "".join(xs)
    assert any(ord(c) > 127 for c in joined)  # unicode appears
    assert len(set(xs)) > 40
    assert len(a.sample(mask=(17, None))) == 17
    with pytest.raises(ValueError):
        a.sample(mask=(3, np.ones(3, dtype=np.int8)))


def test_llm_text_equality_and_repr() -> None:
    assert LLMText(10) == LLMText(10)
    assert LLMText(10) != LLMText(11)
    assert "LLMText" in repr(LLMText(3))
    assert hash(LLMText(10)) == hash(LLMText(10))


def test_observation_round_trip_and_layout() -> None:
    space = observation_space(10_000)
    msgs = [{"role": "system", "content": "sé ∑"}, {"role": "user", "content": "```x```"}]
    obs = make_observation(EXECUTOR, "solver#2", msgs, {"temperature": 0.7})
    assert space.contains(obs)
    assert decode_messages(obs) == msgs
    assert int(obs["actor"]) == EXECUTOR
    term = terminal_observation()
    assert space.contains(term) and term["agent"] == "" and decode_messages(term) == []
    assert make_observation(DESIGNER, "designer", msgs) is not make_observation(DESIGNER, "designer", msgs)
    for _ in range(5):
        assert space.contains(space.sample())


def test_vector_utilities_handle_unicode_text() -> None:
    space = observation_space(2_000)
    obs = [make_observation(EXECUTOR, "a🙂", [{"role": "user", "content": t}]) for t in REAL_TEXT[:3]]
    batched = batch_space(space, 3)
    out = concatenate(space, obs, create_empty_array(space, 3))
    assert batched.contains(out)
    assert list(out["messages"]) == [o["messages"] for o in obs]


def test_shared_memory_is_refused_with_advice() -> None:
    with pytest.raises(CustomSpaceError, match="shared_memory"):
        create_shared_memory(observation_space(10), n=2, ctx=mp.get_context())
