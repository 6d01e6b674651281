"""The Qwen3 thinking switch: ``enable_thinking`` reaches the chat template from a policy spec
(``thinking=``), as ``policy.thinking`` does from a training config; off renders the no-think prompt."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

QWEN3_LIKE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}"
    "{% endif %}"
)


def _factory(calls):
    from mx_agents.backends.hf import HFBackend
    from mx_agents.testing import tiny_llama

    def make(spec, **kw):
        calls.append(kw)
        model, tok = tiny_llama(seed=0)
        tok.chat_template = QWEN3_LIKE
        return HFBackend(model, tok, device="cpu", dtype="float32", **kw)

    return make


@pytest.mark.parametrize("thinking", [False, True, None])
def test_thinking_switch_reaches_the_chat_template(thinking):
    from mx_agents.policies.spec import parse_policy_spec

    calls: list[dict] = []
    policy = parse_policy_spec("some-model", thinking=thinking, backend_factory=_factory(calls))
    backend = policy.backend
    ids = backend.encode_chat([{"role": "user", "content": "What is 1 + 1?"}])
    text = backend.tokenizer.decode(ids)
    assert ("<think>" in text) is (thinking is False)  # off: the empty think block of Qwen3's no-think mode
    assert calls[0].get("chat_template_kwargs", {}).get("enable_thinking") == thinking if thinking is not None \
        else "chat_template_kwargs" not in calls[0]
