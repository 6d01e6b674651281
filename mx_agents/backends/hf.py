"""``HFBackend``: batched chat generation with a Hugging Face transformers causal LM.

Token in, token out: the prompt is the model's own chat template rendered with
``add_generation_prompt=True`` and tokenised once; the response ids are the sampled ids themselves
(never re-tokenised text), so ``prompt_ids + response_ids`` is exactly what the learner scores.

The decoding loop is written here rather than delegated to ``model.generate`` so that each request
keeps its own sampling parameters and ``torch.Generator`` inside one batch, and so the reported
logprobs are the ones defined in :mod:`mx_agents.backends.sampling` (temperature-scaled, before
top-k/top-p).

Batching (``batching=``):

- ``"step"`` (default): continuous batching, :class:`~mx_agents.backends.hf_engine.HFStepEngine`
  behind a :class:`~mx_agents.continuous.StepBatcher`. Requests of concurrent callers join the
  running batch before every decode step and return as soon as they finish; prompts are prefilled
  alone (no padding) after the longest prefix found in a
  :class:`~mx_agents.backends.prefix_cache.PrefixCache` (``prefix_cache_mb``: a sub-agent's earlier
  turns, prompt prefixes shared across requests). Models whose cache is not plain full attention
  (sliding-window or linear-attention layers) fall back to ``"batch"``. The running batch's key/value
  cache is bounded by ``kv_cache_mb`` (on CPU 1024 MiB unless set; on an accelerator unbounded unless
  set, ``max_batch_size`` alone limits it): requests wait while it is full.
- ``"batch"``: the whole-batch loop (:class:`~mx_agents.continuous.DynamicBatcher`): the requests
  waiting when a batch starts are sorted by length, split into chunks of ``max_batch_size``,
  left-padded with an attention mask and explicit position ids, prefilled once, then decoded one
  token per step with the KV cache; rows that finish are dropped from the batch (and the cache). A
  prompt prefix shared by every row of a chunk (``shared_prefix_min`` tokens or more) is prefilled
  once and its cache repeated. Requests arriving meanwhile wait for the whole batch.

Both give the same tokens and logprobs up to float round-off between batch shapes.

Completion conventions:

- ``finish_reason`` is ``"stop"`` when an end-of-sequence token was sampled or a stop string appeared,
  ``"length"`` when ``max_new_tokens`` (or the model's context) ran out.
- An end-of-sequence token is kept as the last element of ``response_ids`` (with its logprob): the
  learner must learn to emit it. It is not part of ``text``.
- A stop string ends generation at the token that completes it; that token is kept in
  ``response_ids``, while ``text`` is cut just before the stop string (the OpenAI convention), and
  ``metadata["stop"]`` names it.
"""

from __future__ import annotations

import inspect
import logging
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mx_agents.backends.base import ChatRequest, Completion, Message, SamplingParams
from mx_agents.backends.sampling import (
    is_greedy,
    over_prompt_limit,
    prompt_too_long,
    select_tokens,
    validate_params,
)
from mx_agents.batching import left_pad

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


#: Key/value budget of the running batch on CPU (MiB), where it comes out of host memory.
DEFAULT_CPU_KV_CACHE_MB = 1024.0


def kv_bytes_per_token(model: Any) -> int:
    """Bytes of attention key/value states one token adds to a cache of ``model`` (all layers)."""
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = int(text.num_attention_heads)
    kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(text, "head_dim", None) or text.hidden_size // heads)
    itemsize = next(model.parameters()).element_size()
    return 2 * int(text.num_hidden_layers) * kv_heads * head_dim * itemsize


def resolve_device(device: str) -> str:
    """``"auto"`` -> ``"cuda"`` when available, else ``"cpu"``; other values are returned checked."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return device


def resolve_dtype(dtype: str | torch.dtype, device: str) -> torch.dtype:
    """``"auto"`` -> bfloat16 on a CUDA device that supports it, float32 otherwise."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(table)} or 'auto'")
    return table[dtype]


def load_hf_model(spec: str | os.PathLike[str], device: str, dtype: torch.dtype) -> PreTrainedModel:
    """Load a causal LM from an HF hub id or a local directory, with a clear error when it fails."""
    import transformers
    from transformers import AutoModelForCausalLM

    # transformers renamed ``torch_dtype`` to ``dtype`` (4.56); older versions ignore ``dtype``.
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    dtype_kw = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
    try:
        model = AutoModelForCausalLM.from_pretrained(str(spec), **{dtype_kw: dtype})
    except (OSError, ValueError) as exc:
        raise OSError(
            f"could not load model {str(spec)!r}: {exc}\n"
            "Give a local directory with a saved model, an HF hub id (needs network access or a "
            "populated HF cache), or 'default' for the embedded SmolLM2-135M-Instruct."
        ) from exc
    return model.to(device)


def load_hf_tokenizer(spec: str | os.PathLike[str]) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(spec))
    except (OSError, ValueError) as exc:
        raise OSError(f"could not load the tokenizer of {str(spec)!r}: {exc}") from exc


@dataclass
class _Row:
    """Decoding state of one request inside a chunk."""

    prompt_ids: list[int]
    params: SamplingParams
    generator: torch.Generator
    budget: int  # max new tokens, already clipped to the model's context
    response_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish_reason: str = ""
    stop: str | None = None
    stop_text: str | None = None  # text cut before the stop string, when one matched
    checked_chars: int = 0  # text length already searched for stop strings


class HFBackend:
    """Chat generation with a transformers causal LM; see the module docstring for conventions.

    ``model``: an HF hub id, a local directory, ``"default"``/``None`` (the embedded SmolLM2, see
    :func:`mx_agents.backends.embedded.resolve_model`), or an already-built ``PreTrainedModel``
    (then ``tokenizer`` is required unless the model's ``name_or_path`` points at one).
    ``seed`` seeds the backend's own RNG, which draws a generator seed for every request whose
    ``SamplingParams.seed`` is ``None``: a backend built with the same seed replays the same calls
    identically. Requests with a seed are reproducible on their own, whatever batch they land in
    (up to float round-off between batch shapes). ``batching``: ``"step"`` (continuous batching with
    a prefix cache of ``prefix_cache_mb`` MiB of key/value states, 0: none) or ``"batch"`` (the
    whole-batch loop, where ``shared_prefix_min`` is the shortest prompt prefix common to a whole
    chunk that is prefilled once for it, 0 turns that sharing off); see the module docstring.
    ``speculative`` (step engine): ``True`` or ``{max_draft: 8, min_match: 3, history_tokens: 200000}``
    checks n-gram drafts of up to ``max_draft`` tokens per row in one forward pass, sampling exactly
    what plain decoding samples in distribution (:mod:`mx_agents.backends.drafts`); other random draws
    than plain decoding, so a seeded request gives another (equally distributed) reply than without.
    """

    name = "hf"

    def __init__(
        self,
        model: str | os.PathLike[str] | PreTrainedModel | None = "default",
        tokenizer: PreTrainedTokenizerBase | str | os.PathLike[str] | None = None,
        *,
        device: str = "auto",
        dtype: str | torch.dtype = "auto",
        max_batch_size: int = 16,
        seed: int = 0,
        shared_prefix_min: int = 32,
        chat_template_kwargs: Mapping[str, Any] | None = None,
        batching: str = "step",
        prefix_cache_mb: float = 512.0,
        kv_cache_mb: float | None = None,
        speculative: Mapping[str, Any] | bool | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if batching not in ("step", "batch"):
            raise ValueError(f"batching must be 'step' or 'batch', got {batching!r}")
        if not prefix_cache_mb >= 0:
            raise ValueError(f"prefix_cache_mb must be >= 0, got {prefix_cache_mb!r}")
        if kv_cache_mb is not None and not kv_cache_mb > 0:
            raise ValueError(f"kv_cache_mb must be > 0 or None, got {kv_cache_mb!r}")
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        if model is None or isinstance(model, (str, os.PathLike)):
            from mx_agents.backends.embedded import resolve_model

            path = resolve_model(None if model is None else str(model))
            self.model = load_hf_model(path, self.device, self.dtype)
            tokenizer = tokenizer if tokenizer is not None else path
        else:
            self.model = model.to(device=self.device, dtype=self.dtype)
            if tokenizer is None:
                source = getattr(model, "name_or_path", "")
                if not source:
                    raise ValueError("a PreTrainedModel was given without a tokenizer; pass tokenizer=")
                tokenizer = source
        if isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = load_hf_tokenizer(tokenizer)
        self.tokenizer = tokenizer
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(
                "the tokenizer has no chat_template; set tokenizer.chat_template to the model's template"
            )
        self.model.eval()
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.max_batch_size = max_batch_size
        self.shared_prefix_min = shared_prefix_min
        self.kv_bytes_per_token = kv_bytes_per_token(self.model)
        if kv_cache_mb is None and str(self.device) == "cpu":
            kv_cache_mb = DEFAULT_CPU_KV_CACHE_MB
        self.kv_cache_bytes = None if kv_cache_mb is None else int(kv_cache_mb * 2**20)
        from mx_agents.backends.hf_engine import HFStepEngine, step_engine_supported
        from mx_agents.backends.prefix_cache import PrefixCache
        from mx_agents.continuous import BatchStats, DynamicBatcher, StepBatcher

        if batching == "step" and step_engine_supported(self.model) is not None:
            batching = "batch"
        self.batching = batching
        # Speculative decoding with n-gram drafts (mx_agents.backends.drafts): the step engine only.
        self.drafter: Any = None
        if speculative:
            from mx_agents.backends.drafts import NgramDrafter

            opts = {} if speculative is True else dict(speculative)
            known = {"max_draft", "min_match", "history_tokens"}
            if unknown := set(opts) - known:
                raise ValueError(f"unknown speculative option(s) {sorted(unknown)}; known: {sorted(known)}")
            drafter = NgramDrafter(**opts)
            if batching != "step":
                logger.warning("speculative decoding needs the step engine; %s decodes without it", self.name)
            elif drafter.max_draft > 0:
                self.drafter = drafter
        self.prefix_cache: PrefixCache | None = None
        # Concurrent callers (one thread per episode) share batches: see mx_agents.continuous.
        self._batcher: DynamicBatcher | StepBatcher
        if batching == "step":
            if prefix_cache_mb > 0:
                self.prefix_cache = PrefixCache(int(prefix_cache_mb * 2**20))
            stats = BatchStats()
            self._batcher = StepBatcher(HFStepEngine(self, stats, self.prefix_cache), stats)
        else:
            self._batcher = DynamicBatcher(self._generate_batch)
        self.weights_version = 0
        self._rng = random.Random(seed)
        self._eos_ids = self._collect_eos_ids()
        self._pad_id = self._pick_pad_id()
        self._context = int(getattr(self.model.config, "max_position_embeddings", 0) or 0) or None
        params = inspect.signature(self.model.forward).parameters
        self._keep_kw = next((k for k in ("logits_to_keep", "num_logits_to_keep") if k in params), None)
        # transformers 5.x renamed ``past_key_values`` to ``cache`` (the old name is deprecated).
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    # -- prompts -------------------------------------------------------------------------------

    def encode_chat(self, messages: Sequence[Message]) -> list[int]:
        """Prompt token ids: the model's chat template with the assistant generation prompt."""
        if not messages:
            raise ValueError("a chat request needs at least one message")
        for m in messages:
            if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
                raise ValueError(f"each message needs 'role' and 'content', got {m!r}")
        text = self.tokenizer.apply_chat_template(
            list(messages), add_generation_prompt=True, tokenize=False, **self.chat_template_kwargs
        )
        # The template already wrote any BOS/special tokens it wants; do not add them twice.
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    # -- generation ----------------------------------------------------------------------------

    def generate(self, requests: list[ChatRequest]) -> list[Completion]:
        """One completion per request, in order; see the module docstring for the conventions."""
        prompts = [self.encode_chat(r.messages) for r in requests]
        completions = self.generate_from_ids(prompts, [r.params for r in requests])
        for req, comp in zip(requests, completions, strict=True):
            comp.metadata.update(req.metadata)
        return completions

    def generate_from_ids(
        self, prompts: Sequence[Sequence[int]], params: Sequence[SamplingParams]
    ) -> list[Completion]:
        """Generate from already-tokenised prompts (one ``SamplingParams`` per prompt).

        Thread-safe: calls from several threads at once are served together (dynamic batching).
        """
        if len(prompts) != len(params):
            raise ValueError(f"{len(prompts)} prompts but {len(params)} sampling params")
        results: list[Completion | None] = [None] * len(prompts)
        todo: list[int] = []
        for i, (ids, p) in enumerate(zip(prompts, params, strict=True)):
            validate_params(p)
            # Checked before batching, so one bad request fails its caller only, not a shared batch.
            if not len(ids):
                raise ValueError("empty prompt")
            if prompt_too_long(ids, p):
                results[i] = over_prompt_limit(ids, p, {"backend": self.name, "weights_version": self.weights_version})
                continue
            if self._context is not None and len(ids) >= self._context:
                raise ValueError(f"prompt of {len(ids)} tokens does not fit the model's context of {self._context}")
            todo.append(i)
        if todo:
            done = self._batcher.submit([(prompts[i], params[i]) for i in todo])
            for i, c in zip(todo, done, strict=True):
                results[i] = c
        return [c for c in results if c is not None]

    @property
    def batch_stats(self) -> Any:
        """:class:`~mx_agents.continuous.BatchStats`: batch widths, prompt tokens, prefix-cache hits."""
        return self._batcher.stats

    def _new_row(self, ids: Sequence[int], p: SamplingParams) -> _Row:
        """A request's decoding state; draws its generator seed from the backend's RNG when unseeded."""
        import torch

        ids = [int(t) for t in ids]
        if not ids:
            raise ValueError("empty prompt")
        budget = p.max_new_tokens
        if self._context is not None:
            if len(ids) >= self._context:
                raise ValueError(f"prompt of {len(ids)} tokens does not fit the model's context of {self._context}")
            budget = min(budget, self._context - len(ids))
        seed = p.seed if p.seed is not None else self._rng.getrandbits(63)
        gen = torch.Generator(device=self.device).manual_seed(int(seed))
        return _Row(prompt_ids=ids, params=p, generator=gen, budget=budget)

    def _generate_batch(self, items: list[tuple[Sequence[int], SamplingParams]]) -> list[Completion]:
        rows = [self._new_row(ids, p) for ids, p in items]
        order = sorted(range(len(rows)), key=lambda i: len(rows[i].prompt_ids))
        for start in range(0, len(order), self.max_batch_size):
            chunk = [rows[i] for i in order[start : start + self.max_batch_size]]
            self._decode_chunk([r for r in chunk if r.budget > 0])
            for r in chunk:
                if r.budget == 0:
                    r.finish_reason = "length"
        return [self._to_completion(r) for r in rows]

    def _decode_chunk(self, rows: list[_Row]) -> None:
        import torch

        if not rows:
            return
        # Rows that share a long prompt prefix (the designer's system prompt and API reference, an
        # agent's system prompt) prefill it once: its KV cache is computed for one row and repeated
        # across the batch, then each row's own tail is prefilled after it. Prefill is compute-bound,
        # so this removes (B - 1) * prefix tokens of work; the tails are left-padded *after* the
        # shared part (masked positions may sit anywhere: the 2-D mask covers past and new keys).
        prefix = self._shared_prefix(rows)
        stats = self._batcher.stats
        for j, r in enumerate(rows):
            stats.record_prompt(len(r.prompt_ids), prefix if j else 0)
        padded = left_pad([r.prompt_ids[prefix:] for r in rows], self._pad_id)
        input_ids = padded.input_ids
        mask = torch.cat([torch.ones((len(rows), prefix), dtype=torch.long), padded.attention_mask], dim=1)
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        # Positions count the shared prefix too, so they come from the whole mask.
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, prefix:]

        live = list(range(len(rows)))  # indices into ``rows`` of the rows still in the batch
        with torch.inference_mode():
            kw = {self._keep_kw: 1} if self._keep_kw else {}
            if prefix:
                head = torch.tensor([rows[0].prompt_ids[:prefix]], dtype=torch.long, device=self.device)
                shared = self._cache_of(self.model(input_ids=head, use_cache=True, **kw))
                shared.batch_repeat_interleave(len(rows))
                kw[self._cache_kw] = shared
            out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                             use_cache=True, **kw)
            cache = self._cache_of(out)
            logits = out.logits[:, -1, :]
            next_pos = positions[:, -1] + 1
            can_prune = hasattr(cache, "batch_select_indices")
            while True:
                batch = [rows[i] for i in live]
                histories = [r.prompt_ids + r.response_ids for r in batch] \
                    if any(r.params.repetition_penalty != 1.0 for r in batch) else None
                tokens, lps = select_tokens(logits, [r.params for r in batch], [r.generator for r in batch],
                                            histories)
                for r, tok, lp in zip(batch, tokens.tolist(), lps.tolist(), strict=True):
                    if not r.finish_reason:
                        self._append(r, tok, lp)
                keep = [j for j, i in enumerate(live) if not rows[i].finish_reason]
                if not keep:
                    break
                if can_prune and len(keep) < len(live):
                    sel = torch.tensor(keep, device=self.device)
                    cache.batch_select_indices(sel)
                    mask, next_pos, tokens = mask[sel], next_pos[sel], tokens[sel]
                    live = [live[j] for j in keep]
                mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
                stats.record_step(mask.shape[0])
                out = self.model(input_ids=tokens[:, None], attention_mask=mask,
                                 position_ids=next_pos[:, None], use_cache=True, **{self._cache_kw: cache})
                cache = self._cache_of(out)
                logits = out.logits[:, -1, :]
                next_pos = next_pos + 1

    def _shared_prefix(self, rows: list[_Row]) -> int:
        """Tokens of prompt prefix common to every row, when worth a separate prefill (else 0).

        Every row keeps at least one token of its own, whose logits start its decoding.
        """
        if len(rows) < 2 or self.shared_prefix_min <= 0:
            return 0
        first = rows[0].prompt_ids
        n = min(len(r.prompt_ids) for r in rows) - 1
        for r in rows[1:]:
            ids = r.prompt_ids
            k = 0
            while k < n and ids[k] == first[k]:
                k += 1
            n = k
            if n < self.shared_prefix_min:
                return 0
        return n

    def _append(self, row: _Row, token: int, logprob: float) -> None:
        row.response_ids.append(token)
        row.logprobs.append(logprob)
        if token in self._eos_ids:
            row.finish_reason = "stop"
            return
        if row.params.stop:
            text = self.tokenizer.decode(row.response_ids, skip_special_tokens=True)
            longest = max(len(s) for s in row.params.stop)
            start = max(0, row.checked_chars - longest + 1)
            hits = [(text.find(s, start), s) for s in row.params.stop]
            hits = [(pos, s) for pos, s in hits if pos >= 0]
            row.checked_chars = len(text)
            if hits:
                pos, stop = min(hits)
                row.finish_reason, row.stop, row.stop_text = "stop", stop, text[:pos]
                return
        if len(row.response_ids) >= row.budget:
            row.finish_reason = "length"

    def _to_completion(self, row: _Row) -> Completion:
        if row.stop_text is not None:
            text = row.stop_text
        else:
            ids = row.response_ids[:-1] if row.response_ids and row.response_ids[-1] in self._eos_ids \
                else row.response_ids
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
        meta: dict[str, Any] = {
            "backend": self.name,
            "weights_version": self.weights_version,
            "logprobs_temperature": 1.0 if is_greedy(row.params) else row.params.temperature,
        }
        if row.stop is not None:
            meta["stop"] = row.stop
        return Completion(text=text, prompt_ids=row.prompt_ids, response_ids=row.response_ids,
                          logprobs=row.logprobs, finish_reason=row.finish_reason, metadata=meta)

    # -- scoring -------------------------------------------------------------------------------

    def score(self, prompt_ids: Sequence[int], response_ids: Sequence[int], temperature: float = 1.0) -> list[float]:
        """Log-probs of ``response_ids`` given ``prompt_ids`` at ``temperature`` (0 means 1).

        Matches the ``logprobs`` that :meth:`generate` records for the same sequence and temperature,
        up to float round-off between the incremental (KV cache) and the full forward pass.
        """
        return self.score_batch([(prompt_ids, response_ids)], temperature)[0]

    def score_batch(
        self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], temperature: float | Sequence[float] = 1.0
    ) -> list[list[float]]:
        """:meth:`score` for many ``(prompt_ids, response_ids)`` pairs, left-padded in chunks."""
        import torch

        temps = [float(temperature)] * len(pairs) if isinstance(temperature, (int, float)) \
            else [float(t) for t in temperature]
        if len(temps) != len(pairs):
            raise ValueError(f"{len(pairs)} pairs but {len(temps)} temperatures")
        if any(not t >= 0 for t in temps):
            raise ValueError(f"temperatures must be >= 0, got {temps}")
        results: list[list[float]] = [[] for _ in pairs]
        order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
        for start in range(0, len(order), self.max_batch_size):
            idxs = [i for i in order[start : start + self.max_batch_size] if len(pairs[i][1]) > 0]
            if not idxs:
                continue
            if any(len(pairs[i][0]) == 0 for i in idxs):
                raise ValueError("scoring needs a non-empty prompt")
            seqs = [[int(t) for t in pairs[i][0]] + [int(t) for t in pairs[i][1]] for i in idxs]
            padded = left_pad(seqs, self._pad_id, device=self.device)
            ids, mask, positions = padded.input_ids, padded.attention_mask, padded.position_ids
            width = padded.head_width
            longest = max(len(pairs[i][1]) for i in idxs)
            # Left padding aligns every sequence's end, so the last ``longest + 1`` positions cover
            # every response token's predictor; keeping only those avoids a [B, L, V] logits tensor.
            kw = {self._keep_kw: longest + 1} if self._keep_kw else {}
            with torch.inference_mode():
                logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, **kw).logits
            logits = logits[:, -(longest + 1) : -1, :].float()
            for j, i in enumerate(idxs):
                n = len(pairs[i][1])
                t = 1.0 if temps[i] <= 1e-5 else temps[i]
                lp = torch.log_softmax(logits[j, longest - n :, :] / t, dim=-1)
                target = ids[j, width - n :]
                results[i] = lp.gather(1, target[:, None])[:, 0].tolist()
        return results

    # -- weights -------------------------------------------------------------------------------

    def load_weights(self, state_dict: Mapping[str, Any], strict: bool = True) -> None:
        """Copy ``state_dict`` into the served model in place (dtype/device converted).

        Unknown keys and shape mismatches raise ``ValueError``. With ``strict`` every parameter must
        be given, except ones that share storage with a given one (tied embeddings). Waits for the
        running requests to finish (none samples with two sets of weights) and empties the prefix
        cache (its states were computed with the old weights).
        """
        import torch

        own = self.model.state_dict()
        unknown = sorted(set(state_dict) - set(own))
        if unknown:
            raise ValueError(f"unknown weight names: {unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
        if strict:
            given_ptrs = {own[k].data_ptr() for k in state_dict}
            missing = sorted(k for k in own if k not in state_dict and own[k].data_ptr() not in given_ptrs)
            if missing:
                raise ValueError(f"missing weights: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        for k, v in state_dict.items():
            if tuple(v.shape) != tuple(own[k].shape):
                raise ValueError(f"shape mismatch for {k}: got {tuple(v.shape)}, model has {tuple(own[k].shape)}")
        with self._batcher.exclusive(), torch.no_grad():
            for k, v in state_dict.items():
                own[k].copy_(v.detach().to(device=own[k].device, dtype=own[k].dtype))
            if self.prefix_cache is not None:
                self.prefix_cache.clear()
            self.weights_version += 1

    # -- helpers -------------------------------------------------------------------------------

    @staticmethod
    def _cache_of(out: Any) -> Any:
        cache = getattr(out, "cache", None)
        return cache if cache is not None else out.past_key_values

    def _collect_eos_ids(self) -> set[int]:
        ids: set[int] = set()
        for source in (self.tokenizer.eos_token_id, getattr(self.model.generation_config, "eos_token_id", None)
                       if getattr(self.model, "generation_config", None) is not None else None,
                       self.model.config.eos_token_id):
            if source is None:
                continue
            ids.update([source] if isinstance(source, int) else list(source))
        if not ids:
            raise ValueError("neither the tokenizer nor the model config defines an eos token")
        return ids

    def _pick_pad_id(self) -> int:
        # Padded positions are masked out, so any valid id works; prefer the declared pad token.
        if self.tokenizer.pad_token_id is not None:
            return int(self.tokenizer.pad_token_id)
        return min(self._eos_ids)

    @property
    def model_path(self) -> Path | None:
        path = getattr(self.model, "name_or_path", "")
        return Path(path) if path and Path(path).exists() else None
