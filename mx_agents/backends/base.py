"""The backend protocol: a batch of chat requests in, completions with token ids/logprobs out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from mx_envs.errors import register_user_error

Message = dict[str, str]  # {"role": "system"|"user"|"assistant", "content": str}


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: disabled
    max_new_tokens: int = 256
    # > 1 discourages every token already in the prompt or the reply (CTRL/HF/vLLM rule: a positive
    # logit is divided by it, a negative one multiplied); 1.0: off. A sampling filter like top-k/top-p:
    # the reported logprobs are the unpenalised ones (mx_agents.backends.sampling).
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    # A prompt longer than this many tokens is not sent to the model: its completion is empty with
    # finish_reason "length" and ``metadata["prompt_tokens"]`` (a training limit like verl's
    # max_prompt_length; the paper: 8192). The turn ends without a reply instead of the whole rollout
    # failing, and nothing is trained on it. None: only the model's context limits the prompt.
    max_prompt_tokens: int | None = None


@dataclass
class ChatRequest:
    messages: list[Message]
    params: SamplingParams = field(default_factory=SamplingParams)
    metadata: dict[str, Any] = field(default_factory=dict)  # caller's bookkeeping, passed through


@dataclass
class Completion:
    """One sampled reply.

    ``prompt_ids + response_ids`` is exactly the sequence the learner scores; ``logprobs[i]`` is the
    sampling log-probability of ``response_ids[i]`` (``None`` when the backend cannot report it).
    """

    text: str
    prompt_ids: list[int]
    response_ids: list[int]
    logprobs: list[float] | None
    finish_reason: str  # "stop" | "length" | "error"
    metadata: dict[str, Any] = field(default_factory=dict)


class BackendError(RuntimeError):
    """A backend could not produce a completion (server down, HTTP error after retries, malformed
    reply). Raised by the LLM policies when a completion comes back with ``finish_reason="error"``,
    so a failing model ends ``mx episode``/``mx eval``/training with its message instead of being
    played as an empty reply."""


register_user_error(BackendError)  # `mx` reports a failing model server in one line, not a traceback


@runtime_checkable
class Backend(Protocol):
    name: str

    def generate(self, requests: list[ChatRequest]) -> list[Completion]:
        """Generate one completion per request, in order; batches internally where it can."""

    def load_weights(self, state_dict: dict[str, Any]) -> None:
        """Replace the served weights (called by the learner after each update)."""
