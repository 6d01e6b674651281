"""A tiny random-weight Llama and a matching chat tokenizer, built in-process for tests.

Nothing is downloaded: the tokenizer is a byte-level BPE trained on a fixed text (so any string can be
encoded, and the vocabulary is identical on every machine), wrapped in ``PreTrainedTokenizerFast`` with
a ChatML chat template; the model's weights are drawn from an explicit ``torch.Generator`` seeded by
``seed``, so the same seed gives bit-identical weights without touching torch's global RNG.

Usable by tests of ``mx_agents`` and ``mx_train`` alike::

    model, tok = tiny_llama(seed=0)
    backend = HFBackend(model, tokenizer=tok)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<|pad|>", "<|im_start|>", "<|im_end|>")

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Fixed training text: digits, arithmetic, code and chat words, so that typical test prompts tokenise
# into a few merged tokens rather than only single bytes.
_CORPUS = [
    "You are a helpful assistant. Solve the problem step by step and put the answer in \\boxed{}.",
    "What is 12 + 30? The answer is 42. What is 7 * 6? 42. Compute 100 - 58 = 42.",
    "def solve(x):\n    return x + 1\n\nprint(solve(41))\n",
    "The quick brown fox jumps over the lazy dog. Hello world! Let's think about it.",
    "system user assistant designer executor agent vote judge debate reflect answer final",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 + - * / = ( ) [ ] { } < > , . : ; ! ?",
]


def tiny_tokenizer(vocab_size: int = 384) -> PreTrainedTokenizerFast:
    """A byte-level BPE chat tokenizer trained on a fixed text (deterministic, offline).

    Special tokens: ``<|pad|>`` (pad), ``<|im_start|>``, ``<|im_end|>`` (eos, also closes every chat
    turn). ``chat_template`` is ChatML; ``padding_side`` is ``"left"``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<|pad|>",
        eos_token="<|im_end|>",
        bos_token=None,
        padding_side="left",
    )
    fast.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    fast.chat_template = CHATML_TEMPLATE
    return fast


def tiny_llama(
    seed: int = 0,
    *,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 64,
    max_position_embeddings: int = 1024,
    init_std: float = 0.3,
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """A tiny random-weight ``LlamaForCausalLM`` (fp32, eval mode) and its tokenizer.

    Weights are drawn from ``torch.Generator().manual_seed(seed)``: normal(0, ``init_std``) for
    matrices and embeddings, ones for norms. ``init_std`` is larger than usual so next-token
    distributions are peaked: greedy decoding then does not hinge on float round-off between
    near-equal logits, which keeps batched-vs-single comparisons meaningful.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if "norm" in name:
                param.fill_(1.0)
            else:
                param.copy_(torch.randn(param.shape, generator=gen) * init_std)
    model.eval()
    return model, tok
