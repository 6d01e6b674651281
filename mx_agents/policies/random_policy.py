"""A seeded random policy: a baseline and a fuzzer for envs (random text; optionally random designs)."""

from __future__ import annotations

import random
import string
from collections.abc import Sequence
from typing import Any

from mx_agents.action import Action
from mx_agents.observation import parse_observation

_ALPHABET = string.ascii_letters + string.digits + string.punctuation + " \n\\{}()é∑"


class RandomPolicy:
    """Random actions from a seeded ``random.Random``.

    Designer turns: with ``designs`` (library design names) a uniformly chosen one of them, fenced as a
    designer would write it; without, random text (which ends the episode as a failed design).
    Executor turns: random text, or ``\\boxed{k}`` with a random integer ``k`` in ``answer_range``
    with probability ``p_answer``.
    """

    def __init__(
        self,
        seed: int = 0,
        designs: Sequence[str] = (),
        max_chars: int = 64,
        p_answer: float = 0.5,
        answer_range: tuple[int, int] = (0, 100),
        name: str = "random",
    ) -> None:
        if max_chars < 0 or not 0.0 <= p_answer <= 1.0:
            raise ValueError("max_chars must be >= 0 and p_answer in [0, 1]")
        self.rng = random.Random(seed)
        self.max_chars = max_chars
        self.p_answer = p_answer
        self.answer_range = answer_range
        self.name = name
        self._design_texts: list[str] = []
        if designs:
            from mx_agents.policies.design_prompt import library_design_source
            from mx_agents.policies.fixed import fence

            self._design_texts = [fence(library_design_source(n)) for n in designs]

    def _text(self) -> str:
        n = self.rng.randint(0, self.max_chars)
        return "".join(self.rng.choice(_ALPHABET) for _ in range(n))

    def act(self, observations: Sequence[Any]) -> list[Action]:
        actions = []
        for obs in observations:
            turn = parse_observation(obs)
            if turn.role == "designer":
                text = self.rng.choice(self._design_texts) if self._design_texts else self._text()
            elif self.rng.random() < self.p_answer:
                text = f"\\boxed{{{self.rng.randint(*self.answer_range)}}}"
            else:
                text = self._text()
            actions.append(Action(text=text, role=turn.role, agent=turn.agent, source="random",
                                  messages=turn.messages))
        return actions
