"""What a policy returns for one turn: the text the env receives, plus token data when an LLM wrote it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from mx_agents.backends.base import Completion, Message, SamplingParams
from mx_agents.transition import Role

ActionSource = Literal["llm", "fixed", "scripted", "random"]


@dataclass
class Action:
    """One turn's action.

    ``text`` is what goes to ``env.step``. When ``source == "llm"``, ``prompt_ids + response_ids`` is the
    exact sequence the learner scores and ``logprobs`` the sampling log-probabilities of
    ``response_ids``; ``messages`` is the chat the model was given (the observation's, possibly with the
    policy's extra instructions). ``script`` is the design script a designer policy extracted from
    ``text`` (``None`` when it found none, or for executor turns).
    """

    text: str
    role: Role
    agent: str
    source: ActionSource
    messages: list[Message] = field(default_factory=list)
    prompt_ids: list[int] | None = None
    response_ids: list[int] | None = None
    logprobs: list[float] | None = None
    finish_reason: str = ""
    script: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def from_llm(self) -> bool:
        return self.source == "llm"

    @classmethod
    def from_completion(
        cls,
        completion: Completion,
        role: Role,
        agent: str,
        messages: list[Message],
        params: SamplingParams | None = None,
    ) -> Action:
        """An LLM action; ``params`` (the request's sampling parameters) go to ``metadata["sampling"]``,
        because the recorded logprobs are those of the temperature-scaled distribution."""
        metadata = dict(completion.metadata)
        if params is not None:
            metadata["sampling"] = dataclasses.asdict(params)
        return cls(
            text=completion.text,
            role=role,
            agent=agent,
            source="llm",
            messages=messages,
            prompt_ids=list(completion.prompt_ids),
            response_ids=list(completion.response_ids),
            logprobs=None if completion.logprobs is None else list(completion.logprobs),
            finish_reason=completion.finish_reason,
            metadata=metadata,
        )
