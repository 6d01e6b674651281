"""Test doubles for the mx_agents tests.

* :class:`CountingBackend` — a TEST DOUBLE of an LLM backend: replies come from a function of the
  request's messages; it records the size of every ``generate`` call (so tests can check batching)
  and makes up token ids (UTF-8 bytes of the text) and logprobs (a constant), which only stand in
  for the real ones.
"""

from __future__ import annotations

from collections.abc import Callable

from mx_agents.backends.base import ChatRequest, Completion, Message


class CountingBackend:
    """TEST DOUBLE backend: ``reply(messages) -> text``; ``calls`` holds each batch's size."""

    def __init__(self, reply: Callable[[list[Message]], str], name: str = "counting") -> None:
        self.reply = reply
        self.name = name
        self.calls: list[int] = []
        self.requests: list[ChatRequest] = []

    def generate(self, requests: list[ChatRequest]) -> list[Completion]:
        self.calls.append(len(requests))
        self.requests.extend(requests)
        out = []
        for r in requests:
            text = self.reply(r.messages)
            ids = list(text.encode("utf-8"))[: r.params.max_new_tokens]
            prompt = "".join(m["content"] for m in r.messages)
            out.append(
                Completion(
                    text=text,
                    prompt_ids=[len(prompt) % 1000, len(r.messages)],
                    response_ids=ids,
                    logprobs=[-0.25] * len(ids),
                    finish_reason="stop",
                )
            )
        return out

    def load_weights(self, state_dict: dict) -> None:  # pragma: no cover - not used by these tests
        raise NotImplementedError("CountingBackend is a test double without weights")
