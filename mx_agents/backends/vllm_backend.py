"""``VLLMBackend``: the vLLM offline engine (``vllm.LLM``), extra ``gpu``. Needs CUDA.

Token in, token out as in :class:`~mx_agents.backends.hf.HFBackend`: prompts are rendered with the
model's chat template and tokenised here, passed to vLLM as ``prompt_token_ids``, and the sampled
``token_ids`` come back with the sampled token's logprob (``SamplingParams(logprobs=0)`` asks for
exactly that one). On vLLM versions that have ``logprobs_mode`` the engine is started with
``"processed_logprobs"``, i.e. log-probs after temperature scaling and top-k/top-p, so with top-k and
top-p disabled they equal the tempered-distribution logprobs that ``HFBackend`` reports; with
truncation active they are those of the truncated distribution (``metadata["logprobs_semantics"]``
says which one each completion carries). On older vLLM they are the raw (temperature 1) logprobs.

Weights: :meth:`VLLMBackend.load_weights` pushes a learner's state dict into the running engine
without a restart, through ``LLM.collective_rpc`` (recent vLLM; runs on every worker) or, on older
versions, the driver worker's model directly; it then resets the prefix cache, whose entries were
computed with the old weights. :meth:`sleep`/:meth:`wake_up` free and restore GPU memory between
rollout phases when the engine was built with ``enable_sleep_mode=True``.

Status: written against the documented vLLM API, but not run on this project's development machine,
which has no GPU; the tests skip with that reason when vLLM or CUDA is missing.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping, Sequence
from typing import Any

from mx_agents.backends.base import ChatRequest, Completion, Message
from mx_agents.backends.sampling import is_greedy, validate_params


def vllm_unavailable_reason() -> str | None:
    """Why :class:`VLLMBackend` cannot run here (``None`` when it can)."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return "vLLM is not installed (pip install 'metaagentx[gpu]')"
    import torch

    if not torch.cuda.is_available():
        return "vLLM needs a CUDA device and none is available"
    return None


def _load_weights_on_worker(worker: Any, weights: list[tuple[str, Any]]) -> int:
    """Runs inside each vLLM worker (via ``collective_rpc``): load weights into its model in place."""
    runner = getattr(worker, "model_runner", None) or worker.worker.model_runner
    runner.model.load_weights(weights=weights)
    return len(weights)


class VLLMBackend:
    """Generation with ``vllm.LLM``; see the module docstring.

    ``model``: an HF id, a local directory, or ``"default"``/``None`` for the embedded SmolLM2.
    ``engine_kwargs`` go to ``vllm.LLM`` unchanged (e.g. ``tensor_parallel_size``, ``max_model_len``).
    """

    name = "vllm"

    def __init__(
        self,
        model: str | os.PathLike[str] | None = "default",
        *,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.5,
        seed: int = 0,
        enable_sleep_mode: bool = False,
        **engine_kwargs: Any,
    ) -> None:
        reason = vllm_unavailable_reason()
        if reason is not None:
            raise RuntimeError(f"VLLMBackend unavailable: {reason}")
        import vllm
        from vllm.engine.arg_utils import EngineArgs

        from mx_agents.backends.embedded import resolve_model

        self.model_path = resolve_model(None if model is None else str(model))
        kwargs: dict[str, Any] = {
            "model": self.model_path,
            "dtype": dtype,
            "gpu_memory_utilization": gpu_memory_utilization,
            "seed": seed,
            "enable_sleep_mode": enable_sleep_mode,
        }
        fields = getattr(EngineArgs, "__dataclass_fields__", {})
        self._processed_logprobs = "logprobs_mode" in fields
        if self._processed_logprobs:
            kwargs["logprobs_mode"] = "processed_logprobs"
        kwargs.update(engine_kwargs)
        # Recent vLLM (V1, multiprocess engine) only ships a callable to its workers through
        # ``collective_rpc`` when this is set; the callable is this module's own function.
        os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
        self.llm = vllm.LLM(**kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"the tokenizer of {self.model_path!r} has no chat_template")
        self.weights_version = 0
        self._sampling_params_cls = vllm.SamplingParams
        self._top_k_off = self._probe_top_k_off()

    def _probe_top_k_off(self) -> int:
        # vLLM changed "top-k disabled" from -1 to 0 at some version; use whichever it accepts.
        try:
            self._sampling_params_cls(top_k=0)
            return 0
        except ValueError:
            return -1

    def encode_chat(self, messages: Sequence[Message]) -> list[int]:
        if not messages:
            raise ValueError("a chat request needs at least one message")
        text = self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def generate(self, requests: list[ChatRequest]) -> list[Completion]:
        prompts = [self.encode_chat(r.messages) for r in requests]
        out = self.generate_from_ids(prompts, list(requests))
        for req, comp in zip(requests, out, strict=True):
            comp.metadata.update(req.metadata)
        return out

    def generate_from_ids(self, prompts: Sequence[Sequence[int]], requests: Sequence[ChatRequest]) -> list[Completion]:
        results: list[Completion | None] = [None] * len(prompts)
        todo: list[int] = []
        for i, (ids, req) in enumerate(zip(prompts, requests, strict=True)):
            validate_params(req.params)
            if req.params.max_new_tokens == 0:  # vLLM requires max_tokens >= 1
                results[i] = Completion("", list(ids), [], [], "length", {"backend": self.name})
            else:
                todo.append(i)
        if todo:
            sps = [self._sampling_params(requests[i].params) for i in todo]
            inputs = [{"prompt_token_ids": [int(t) for t in prompts[i]]} for i in todo]
            outputs = self.llm.generate(inputs, sps, use_tqdm=False)
            for i, out in zip(todo, outputs, strict=True):
                results[i] = self._to_completion(list(prompts[i]), out, requests[i])
        return [c for c in results if c is not None]

    def _sampling_params(self, p: Any) -> Any:
        return self._sampling_params_cls(
            n=1,
            temperature=0.0 if is_greedy(p) else p.temperature,
            top_p=p.top_p,
            top_k=p.top_k if p.top_k > 0 else self._top_k_off,
            max_tokens=p.max_new_tokens,
            stop=list(p.stop) or None,
            seed=p.seed,
            logprobs=0,
            skip_special_tokens=True,
        )

    def _to_completion(self, prompt_ids: list[int], out: Any, req: ChatRequest) -> Completion:
        o = out.outputs[0]
        ids = [int(t) for t in o.token_ids]
        logprobs = [float(step[t].logprob) for step, t in zip(o.logprobs or [], ids, strict=False)]
        truncated = req.params.top_k > 0 or req.params.top_p < 1.0
        meta: dict[str, Any] = {
            "backend": self.name,
            "weights_version": self.weights_version,
            "logprobs_semantics": ("raw" if not self._processed_logprobs
                                   else "tempered+truncated" if truncated else "tempered"),
        }
        if isinstance(o.stop_reason, str):
            meta["stop"] = o.stop_reason
        finish = o.finish_reason if o.finish_reason in ("stop", "length") else "error"
        return Completion(text=o.text, prompt_ids=prompt_ids, response_ids=ids,
                          logprobs=logprobs if len(logprobs) == len(ids) else None,
                          finish_reason=finish, metadata=meta)

    def load_weights(self, state_dict: Mapping[str, Any]) -> None:
        """Load the learner's weights (HF parameter names) into the running engine in place."""
        weights = [(k, v.detach()) for k, v in state_dict.items()]
        rpc = getattr(self.llm, "collective_rpc", None)
        if rpc is not None and "method" in inspect.signature(rpc).parameters:
            rpc(_load_weights_on_worker, args=(weights,))
        else:
            executor = self.llm.llm_engine.model_executor
            executor.driver_worker.model_runner.model.load_weights(weights=weights)
        reset = getattr(self.llm, "reset_prefix_cache", None)
        if reset is not None:
            reset()
        self.weights_version += 1

    def sleep(self, level: int = 1) -> None:
        """Free GPU memory (level 1 keeps weights in CPU memory); needs ``enable_sleep_mode=True``."""
        self.llm.sleep(level=level)

    def wake_up(self) -> None:
        self.llm.wake_up()
