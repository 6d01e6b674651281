"""OpenAIBackend against a local test double of an OpenAI-compatible server (see openai_double.py)."""

from __future__ import annotations

import asyncio
import time

import pytest

pytest.importorskip("httpx")

from openai_double import ChatServerDouble  # noqa: E402

from mx_agents.backends.base import Backend, ChatRequest, SamplingParams  # noqa: E402
from mx_agents.backends.openai_http import OpenAIBackend  # noqa: E402


def _reqs(*texts: str, **params) -> list[ChatRequest]:
    sp = SamplingParams(**{"max_new_tokens": 64, **params})
    return [ChatRequest([{"role": "user", "content": t}], sp, metadata={"i": i}) for i, t in enumerate(texts)]


def _backend(server: ChatServerDouble, **kw) -> OpenAIBackend:
    kw = {"backoff_s": 0.01, "timeout_s": 2.0, "max_retries": 3, **kw}
    return OpenAIBackend(server.base_url, "double-model", api_key="sk-test", **kw)


def test_returns_text_token_ids_logprobs_in_order():
    with ChatServerDouble() as server:
        backend = _backend(server)
        assert isinstance(backend, Backend)
        comps = backend.generate(_reqs("abc", "hello", "xy", stop=("zz",), top_k=5, seed=3, repetition_penalty=1.1))
    assert [c.text for c in comps] == ["cba", "olleh", "yx"]
    assert comps[1].response_ids == [ord(c) for c in "olleh"]
    assert comps[1].prompt_ids == [ord(c) for c in "hello"]
    assert comps[1].logprobs == [-0.25] * 5
    assert [c.metadata["i"] for c in comps] == [0, 1, 2]
    meta = comps[0].metadata
    assert meta["token_ids_provided"] and meta["prompt_ids_provided"] and meta["logprobs_provided"]
    assert "warning" not in meta
    body = server.requests[0]
    assert body["model"] == "double-model" and body["logprobs"] is True and body["return_token_ids"] is True
    assert body["stop"] == ["zz"] and body["top_k"] == 5 and body["seed"] == 3
    assert body["repetition_penalty"] == 1.1
    assert server.headers[0]["Authorization"] == "Bearer sk-test"


def test_finish_reason_length():
    with ChatServerDouble() as server:
        (comp,) = _backend(server).generate(_reqs("abcdef", max_new_tokens=3))
    assert comp.finish_reason == "length" and comp.text == "fed"


def test_flags_missing_token_ids_and_logprobs():
    with ChatServerDouble(token_ids=False, logprobs=False) as server:
        (comp,) = _backend(server).generate(_reqs("abc"))
    assert comp.text == "cba"
    assert comp.response_ids == [] and comp.prompt_ids == [] and comp.logprobs is None
    assert comp.metadata["token_ids_provided"] is False
    assert comp.metadata["logprobs_provided"] is False
    assert "did not return" in comp.metadata["warning"]


def test_retries_on_500_and_429():
    with ChatServerDouble(faults=["500", "429", "500"]) as server:
        (comp,) = _backend(server).generate(_reqs("abc"))
    assert comp.finish_reason == "stop" and comp.text == "cba"
    assert comp.metadata["attempts"] == 4
    assert len(server.requests) == 4


def test_gives_up_after_max_retries_with_an_error_completion():
    with ChatServerDouble(faults=["500"] * 10) as server:
        comps = _backend(server, max_retries=2).generate(_reqs("abc", "de"))
    bad = [c for c in comps if c.finish_reason == "error"]
    assert len(bad) == 2  # 2 requests x 3 attempts consume 6 of the 10 injected faults
    assert "HTTP 500" in bad[0].metadata["error"]
    assert bad[0].metadata["attempts"] == 3


def test_timeout_is_retried():
    with ChatServerDouble(faults=["sleep:1.5"]) as server:
        start = time.monotonic()
        (comp,) = _backend(server, timeout_s=0.3).generate(_reqs("abc"))
        elapsed = time.monotonic() - start
    assert comp.text == "cba" and comp.metadata["attempts"] == 2
    assert elapsed < 1.5  # did not wait for the slow reply


def test_timeout_every_time_becomes_an_error():
    with ChatServerDouble(faults=["sleep:1"] * 3) as server:
        (comp,) = _backend(server, timeout_s=0.2, max_retries=1).generate(_reqs("abc"))
    assert comp.finish_reason == "error"
    assert "Timeout" in comp.metadata["error"]


def test_falls_back_without_extensions_on_400():
    with ChatServerDouble(faults=["reject-extensions"]) as server:
        backend = _backend(server)
        (comp,) = backend.generate(_reqs("abc"))
        assert comp.text == "cba" and comp.metadata["token_ids_provided"] is False
        assert backend.send_extensions is False
        backend.generate(_reqs("xyz"))
    assert "return_token_ids" not in server.requests[-1]


@pytest.mark.parametrize("limit", [1, 3])
def test_concurrency_limit_is_respected_and_reached(limit):
    """Exactly ``limit`` requests in flight at the peak: a bound that one-at-a-time sending would also
    meet (<=) proves nothing, so the peak must reach the limit too. Each request holds the server for
    0.2 s (a ``sleep`` fault) so that concurrent requests overlap even on a loaded machine."""
    with ChatServerDouble(faults=["sleep:0.2"] * 6) as server:
        comps = _backend(server, max_concurrency=limit).generate(_reqs(*[f"m{i}" for i in range(6)]))
    assert [c.text for c in comps] == [f"m{i}"[::-1] for i in range(6)]
    assert server.max_in_flight == limit


def test_generate_works_inside_a_running_event_loop():
    async def main():
        with ChatServerDouble() as server:
            return _backend(server).generate(_reqs("abc"))

    (comp,) = asyncio.run(main())
    assert comp.text == "cba"


def test_connection_refused_is_an_error_completion():
    backend = OpenAIBackend("http://127.0.0.1:9/v1", "m", max_retries=1, backoff_s=0.01, timeout_s=1.0)
    (comp,) = backend.generate(_reqs("abc"))
    assert comp.finish_reason == "error" and "Connect" in comp.metadata["error"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="http"):
        OpenAIBackend("localhost:8000", "m")
    with pytest.raises(ValueError, match="max_concurrency"):
        OpenAIBackend("http://x/v1", "m", max_concurrency=0)
    with pytest.raises(NotImplementedError, match="server"):
        OpenAIBackend("http://x/v1", "m").load_weights({})


def test_max_prompt_tokens_drops_the_reply_to_an_over_long_prompt():
    # The server tokenises, so the limit is applied to what it reports: the double's prompt ids are
    # the characters of the prompt.
    with ChatServerDouble() as server:
        comps = _backend(server).generate(_reqs("abcdef", "xy", max_prompt_tokens=4))
    assert comps[0].text == "" and comps[0].response_ids == [] and comps[0].finish_reason == "length"
    assert comps[0].metadata["prompt_tokens"] == 6 and comps[0].metadata["max_prompt_tokens"] == 4
    assert comps[1].text == "yx" and comps[1].finish_reason == "stop"
