"""Per-turn sampling temperatures reach the loss: each transition's tokens are scored at the
temperature recorded for its turn (a design may give an agent its own), not at one global one."""

from __future__ import annotations

import pytest

from mx_agents.transition import Transition

torch = pytest.importorskip("torch")


def _transition(prompt, response, temperature):
    return Transition(episode_id="e", task_uid="t", task_id="t", design_id=0, execution_id=0, role="executor",
                      agent="a", turn=0, prompt_ids=prompt, response_ids=response, logprobs=None,
                      metadata={"temperature": temperature})


@pytest.mark.parametrize("chunk", [0, 4])  # full logits and the chunked lm-head path
def test_each_turn_is_scored_at_its_recorded_temperature(chunk):
    from mx_agents.backends.hf import HFBackend
    from mx_agents.testing import tiny_llama
    from mx_train.learner import Learner

    model, tok = tiny_llama(seed=0)
    backend = HFBackend(model, tok, device="cpu", dtype="float32")
    learner = Learner(model, {"device": "cpu", "logits_chunk_tokens": chunk}, tokenizer=tok)
    prompt = backend.encode_chat([{"role": "user", "content": "What is 12 + 30?"}])
    response = [5, 17, 42, 9, 23, 11]
    turns = [_transition(prompt, response, 0.4), _transition(prompt, response, 1.0),
             _transition(prompt, response, 0.0)]
    got = learner.logprobs(turns)
    want = [backend.score(prompt, response, temperature=0.4), backend.score(prompt, response, temperature=1.0),
            backend.score(prompt, response, temperature=1.0)]  # greedy turns were recorded at T = 1
    for g, w in zip(got, want, strict=True):
        assert g == pytest.approx(w, abs=1e-4)
    assert max(abs(a - b) for a, b in zip(got[0], got[1], strict=True)) > 1e-2  # the temperature mattered
