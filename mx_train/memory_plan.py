"""Memory plan of a training config for the device it runs on: per GPU (rank 0, the busiest) for a
CUDA policy, host memory of the trainer process for a CPU one, and whether it fits
(``mx train --config F --dry-run [--gpus N --gpu-mem-gb G | --host-mem-gb H] [--json]``).

Sizes come from the model's shapes (hidden size, layers, heads, KV heads, head dim, intermediate
size, vocabulary, tied embeddings): from the HF config through ``transformers.AutoConfig`` when it
is available offline (a local directory or the HF cache), else from :data:`KNOWN_CONFIGS` (the
configs of the models the shipped configs use).

The plan is for the busiest GPU, rank 0, which also hosts the trainer's engine. Terms (bytes):

* learner state, sharded over the ``N`` learner ranks (FSDP2): fp32 master weights ``4P/N``, fp32
  gradients ``4P/N``, AdamW moments ``8P/N`` (on the host with ``optimizer_offload``). One process
  without FSDP and a bf16 model: the bf16 model ``2P`` (the engine's, when shared), its bf16
  gradients ``2P`` until they are moved to the fp32 master gradients ``4P``, masters ``4P``, moments
  ``8P``. LoRA: the frozen bf16 base ``2P`` and the same terms for the adapter parameters only;
* FSDP working set: the all-gathered compute-dtype copy of the root (embeddings, LM head) and of
  two decoder layers (the one computing and the one prefetched), plus one layer's unsharded grads;
* activations with checkpointing: each layer's input kept for backward (``T * H * 2`` bytes per
  layer, ``T`` = ``micro_batch_tokens``) plus one layer's full activations during its recompute
  (without checkpointing: every layer's full activations);
* logits chunk: ``logits_chunk_tokens * V`` fp32 values about three times (logits, softmax,
  gradient); ``logits_chunk_tokens: 0`` (full logits) costs that for all ``T`` tokens;
* engine on the GPU: its bf16 weights (when it does not share the learner's model object) and its
  KV cache for ``policy.max_batch_size`` sequences of prompt + response tokens;
* overhead: CUDA context and allocator fragmentation (3 GiB + 5 %).

Host memory (not counted against the GPU): parked per-role optimizer state of stagewise training,
offloaded optimizer state.

**CPU runs** (``policy.device: cpu``): everything lives in the trainer process's host memory, and
the plan is its peak resident set (:func:`plan_host_memory`), the largest of three phases on top of
what stays resident:

* resident: the Python runtime with torch and transformers (:data:`RUNTIME_BYTES`, measured), each
  distinct model's weights in its dtype (fp32 on CPU; a shared policy's designer and executor are one
  model, and the learner trains the engine's own object unless its dtype differs or the engine is a
  weight-serving one such as vLLM, which holds a copy of its own), and the AdamW moments of the active
  phase ``8P`` once a learner has stepped (``learner.park_optimizer: auto`` parks the inactive phase's
  on disk on the CPU: nothing resident; ``memory`` keeps them: another ``8P``);
* the update: fp32 gradients ``4P``, activations of one ``micro_batch_tokens`` micro-batch (each
  layer's input with gradient checkpointing, plus one layer's full activations and attention
  probabilities; every layer's without), and the logits chunk (``3 x 4 x chunk x V``);
* the warm start (cold-start SFT, before any RL moments exist): gradients, its own AdamW ``8P`` and
  the same activations and logits;
* the rollout: the engine's KV cache for the concurrent sequences (at most ``policy.max_batch_size``
  and at most the step's ``B x M x N`` episodes) of ``max_prompt_tokens`` (1024 when unset) plus the
  longer reply budget, for an HF engine at most its ``kv_cache_mb`` (1024 MiB on the CPU). Its
  prefix cache (at most ``prefix_cache_mb``, what the step's prompts put there) is not counted; the
  trainer clears it before each update;
* speculative decoding (``policy.engine_kwargs.speculative``, HF engine): the n-gram draft history,
  ``DRAFT_HISTORY_BYTES_PER_TOKEN`` x ``history_tokens`` (31 MiB at the default 200k);
* async rollouts (``rollout.async``): the engine's own copy of the weights (``dtype x P``) stays
  resident (the next rollout runs beside the update).

Under ``distributed.backend: ray`` each rollout worker is a process of its own (runtime, its engine's
weights and KV cache): the plan lists it apart from the trainer's.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

GIB = 1024**3

# HF config fields of the models the shipped configs name (for offline planning).
KNOWN_CONFIGS: dict[str, dict[str, Any]] = {
    "Qwen/Qwen3-8B": {"hidden_size": 4096, "num_hidden_layers": 36, "num_attention_heads": 32,
                      "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 12288,
                      "vocab_size": 151936, "tie_word_embeddings": False, "qk_norm": True},
    "Qwen/Qwen3-4B": {"hidden_size": 2560, "num_hidden_layers": 36, "num_attention_heads": 32,
                      "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 9728,
                      "vocab_size": 151936, "tie_word_embeddings": True, "qk_norm": True},
    "Qwen/Qwen3-1.7B": {"hidden_size": 2048, "num_hidden_layers": 28, "num_attention_heads": 16,
                        "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 6144,
                        "vocab_size": 151936, "tie_word_embeddings": True, "qk_norm": True},
    "HuggingFaceTB/SmolLM2-135M-Instruct": {"hidden_size": 576, "num_hidden_layers": 30,
                                            "num_attention_heads": 9, "num_key_value_heads": 3,
                                            "intermediate_size": 1536, "vocab_size": 49152,
                                            "tie_word_embeddings": True},
    "HuggingFaceTB/SmolLM2-360M-Instruct": {"hidden_size": 960, "num_hidden_layers": 32,
                                            "num_attention_heads": 15, "num_key_value_heads": 5,
                                            "intermediate_size": 2560, "vocab_size": 49152,
                                            "tie_word_embeddings": True},
    "HuggingFaceTB/SmolLM2-1.7B-Instruct": {"hidden_size": 2048, "num_hidden_layers": 24,
                                            "num_attention_heads": 32, "num_key_value_heads": 32,
                                            "intermediate_size": 8192, "vocab_size": 49152,
                                            "tie_word_embeddings": True},
}
ALIASES = {"default": "HuggingFaceTB/SmolLM2-135M-Instruct"}


@dataclass(frozen=True)
class ModelShape:
    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool
    qk_norm: bool = False
    source: str = "table"  # "table" | "config"

    @classmethod
    def from_config(cls, name: str, cfg: Mapping[str, Any], source: str) -> ModelShape:
        hidden = int(cfg["hidden_size"])
        heads = int(cfg["num_attention_heads"])
        return cls(
            name=name, hidden=hidden, layers=int(cfg["num_hidden_layers"]), heads=heads,
            kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or hidden // heads),
            intermediate=int(cfg["intermediate_size"]), vocab=int(cfg["vocab_size"]),
            tied=bool(cfg.get("tie_word_embeddings", False)),
            qk_norm=bool(cfg.get("qk_norm", cfg.get("model_type") == "qwen3")), source=source,
        )

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def layer_params(self) -> int:
        attn = self.hidden * (self.q_dim + 2 * self.kv_dim) + self.q_dim * self.hidden
        mlp = 3 * self.hidden * self.intermediate
        norms = 2 * self.hidden + (2 * self.head_dim if self.qk_norm else 0)
        return attn + mlp + norms

    def embed_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2)

    def params(self) -> int:
        return self.layers * self.layer_params() + self.embed_params() + self.hidden

    def lora_params(self, r: int) -> int:
        """All-linear LoRA adapters of rank ``r``: ``r * (in + out)`` per projection."""
        per_layer = r * (
            (self.hidden + self.q_dim) * 2 + (self.hidden + self.kv_dim) * 2 + (self.hidden + self.intermediate) * 3
        )
        return self.layers * per_layer


DRAFT_HISTORY_BYTES_PER_TOKEN = 165  # NgramDrafter: token lists + n-gram index, measured with tracemalloc


def model_shape(spec: str) -> ModelShape:
    """Shapes of ``spec`` (an HF id, local directory, ``default``, ``tiny-random``, ``vllm:``/``hf:``
    prefixed): its HF config when transformers can read it offline, else the known table."""
    name = spec.split(":", 1)[1] if spec.startswith(("vllm:", "hf:")) else spec
    name = ALIASES.get(name or "default", name or "default")
    if name == "tiny-random":
        from mx_agents.backends.embedded import tiny_random_model_path

        name = str(tiny_random_model_path())
    try:
        import transformers

        cfg = transformers.AutoConfig.from_pretrained(name, local_files_only=True)
        d = cfg.to_dict()
        d.setdefault("qk_norm", getattr(cfg, "model_type", "") == "qwen3")
        return ModelShape.from_config(name, d, "config")
    except Exception:  # noqa: BLE001 - offline and not cached: fall back to the table
        pass
    for key, cfg in KNOWN_CONFIGS.items():
        if key.lower() == name.lower() or key.split("/")[-1].lower() == name.lower():
            return ModelShape.from_config(key, cfg, "table")
    raise ValueError(
        f"no config for model {spec!r}: not readable offline by transformers.AutoConfig and not in the "
        f"known table ({', '.join(sorted(KNOWN_CONFIGS))})"
    )


@dataclass
class MemoryPlan:
    model: str
    params_b: float
    gpus: int
    gpu_mem_gb: float
    learner_procs: int
    mode: str
    per_gpu_gb: dict[str, float]
    total_gb: float
    fits: bool
    why: str
    host_gb: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    shape_source: str = "table"
    device: str = "cuda"  # "cuda": per-GPU plan; "cpu": host-memory plan of the trainer process
    placement: dict[str, Any] | None = None  # the PlacementPlan it was made for (mx_train.placement)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def render(self) -> str:
        if self.device == "cpu":
            lines = [
                f"memory plan: {self.model} ({self.params_b:.3f}B params, shapes from {self.shape_source}), "
                f"{self.mode}, on the CPU: peak resident memory of the trainer process, {self.gpu_mem_gb:g} GB host",
            ]
        else:
            lines = [
                f"memory plan: {self.model} ({self.params_b:.2f}B params, shapes from {self.shape_source}), "
                f"{self.mode}, {self.learner_procs} learner process(es) on {self.gpus} x {self.gpu_mem_gb:g} GB",
                "per GPU (rank 0, the busiest):",
            ]
        width = max([28, *(len(k) for k in self.per_gpu_gb)])
        for k, v in self.per_gpu_gb.items():
            lines.append(f"  {k:<{width}} {v:9.3f} GB")
        lines.append(f"  {'total':<{width}} {self.total_gb:9.3f} GB of {self.gpu_mem_gb:g} GB")
        for k, v in self.host_gb.items():
            lines.append(f"  {'host: ' if self.device != 'cpu' else ''}{k:<{width - 6 if self.device != 'cpu' else width}} "
                         f"{v:9.3f} GB")
        lines.append(("FITS: " if self.fits else "DOES NOT FIT: ") + self.why)
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


def plan_device(config: Any, gpus: int | None = None) -> str:
    """"cpu" or "cuda": where ``config`` computes (``auto``: a GPU when ``gpus`` are planned or CUDA is here)."""
    device = str(config.policy.device)
    if device.startswith("cuda"):
        return "cuda"
    if device == "cpu":
        return "cpu"
    if gpus:
        return "cuda"
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:  # the base install: no torch, no GPU to compute on
        return "cpu"


def plan_memory(config: Any, *, gpus: int | None = None, gpu_mem_gb: float | None = None,
                learner_procs: int | None = None, placement: Any = None,
                host_mem_gb: float | None = None) -> MemoryPlan:
    """The plan of a :class:`~mx_train.config.TrainConfig` for its device (see module doc): per GPU on
    CUDA (``placement``, a :class:`~mx_train.placement.PlacementPlan`, says how many rollout engines
    share rank 0's GPU), host memory of the trainer process on the CPU (against ``host_mem_gb``,
    default this machine's memory)."""
    if plan_device(config, gpus) == "cpu":
        return plan_host_memory(config, learner_procs=learner_procs, host_mem_gb=host_mem_gb, placement=placement)
    lc = config.learner
    d = config.distributed
    n = int(learner_procs or getattr(d, "learner_procs", 1) or 1)
    gpus = int(gpus or n)
    notes: list[str] = []
    if n > gpus:
        notes.append(f"the config asks for {n} learner processes; planned with {gpus} (one per GPU)")
        n = gpus
    gpu_mem_gb = float(gpu_mem_gb if gpu_mem_gb is not None else 80.0)
    shape = model_shape(config.policy.model)
    p = shape.params()
    compute = 2 if (lc.dtype == "bfloat16" or (lc.dtype == "auto" and config.policy.dtype in ("bfloat16", "auto"))) else 4
    t = lc.micro_batch_tokens
    comp: dict[str, float] = {}
    host: dict[str, float] = {}
    lora = lc.lora is not None
    if lora:
        mode = f"LoRA r={int((lc.lora or {}).get('r', 16))}, 1 process"
        trained = shape.lora_params(int((lc.lora or {}).get("r", 16)))
        comp["base weights (bf16, frozen)"] = 2 * p
        comp["adapter masters+grads (fp32)"] = 8 * trained
        comp["adapter AdamW (fp32)"] = 8 * trained
        engine_shares = not config.policy.model.startswith("vllm:")
        if n > 1:
            notes.append("LoRA runs in one learner process (the FSDP learner is full fine-tuning)")
    elif n == 1:
        mode = "full fine-tune, 1 process" + (" (bf16 model + fp32 masters)" if compute == 2 else " (fp32)")
        comp["model weights"] = compute * p
        # bf16 grads are moved one tensor at a time onto the fp32 masters: ~4P at the peak.
        comp["gradients (fp32)"] = 4 * p
        if compute == 2:
            comp["fp32 master weights"] = 4 * p
        engine_shares = not config.policy.model.startswith("vllm:")
    else:
        mode = f"full fine-tune, FSDP2 over {n} processes (fp32 master shards, {('bf16' if compute == 2 else 'fp32')} compute)"
        comp["fp32 master shards"] = 4 * p / n
        comp["fp32 gradient shards"] = 4 * p / n
        comp["FSDP gathered working set"] = compute * (shape.embed_params() + 2 * shape.layer_params()) + 4 * shape.layer_params()
        engine_shares = False  # rank 0's engine model is a full copy beside its shard
    opt_bytes = 8 * (shape.lora_params(int((lc.lora or {}).get("r", 16))) if lora else p) / (1 if lora else n)
    if lc.optimizer_offload:
        host["AdamW state (offloaded)"] = opt_bytes
        notes.append("optimizer_offload: AdamW state on the host; the step runs there")
    elif not lora:
        comp["AdamW state (fp32)"] = opt_bytes
    if config.schedule.mode == "stagewise" and lc.phase_optimizer == "per_role":
        host["parked per-role AdamW"] = opt_bytes
    layer_full = 2 * t * (2 * shape.hidden + 3 * shape.q_dim + 2 * shape.kv_dim + 4 * shape.intermediate)
    if lc.gradient_checkpointing:
        comp["activations (checkpointed)"] = 2 * t * shape.hidden * shape.layers + layer_full
    else:
        comp["activations (no checkpointing)"] = layer_full * shape.layers
    chunk = lc.logits_chunk_tokens or t
    comp["logits chunk" if lc.logits_chunk_tokens else "full logits"] = 3 * 4 * min(chunk, t) * shape.vocab
    # GPU 0 holds the trainer's backend model (a separate bf16 copy unless a single-process learner
    # trains that very object) and, under Ray, the rollout worker pinned to it. Engines that generate
    # there need a KV cache: the local backend, or that Ray worker.
    ray_here = d.backend == "ray" and d.worker_gpus > 0
    if d.backend == "ray" and not ray_here:
        notes.append("distributed.worker_gpus is 0: Ray workers get no GPU (on a GPU node every worker would "
                     "load its model onto cuda:0); set it > 0")
    # Ray engines on rank 0's GPU: what the placement put there (colocated: its engines; split: none);
    # without a placement, one (the layout this plan assumed before placements existed).
    ray_engines = 0
    if ray_here:
        ray_engines = placement.engines_on_driver_gpu() if placement is not None else 1
    engines = (1 if d.backend == "local" else 0) + ray_engines
    weight_copies = (0 if engine_shares else 1) + ray_engines
    if weight_copies > 0:
        comp[f"engine weights (bf16) x{weight_copies}"] = 2 * p * weight_copies
    prompt_limit = int(getattr(config.rollout, "max_prompt_tokens", 0) or 4096)
    resp = max(config.rollout.designer.max_new_tokens, config.rollout.executor.max_new_tokens)
    kv_tokens = config.policy.max_batch_size * (prompt_limit + resp)
    if engines:
        comp[f"KV cache ({config.policy.max_batch_size} seqs x {prompt_limit + resp} tok) x{engines}"] = (
            engines * kv_tokens * 2 * shape.layers * shape.kv_dim * 2
        )
    subtotal = sum(comp.values())
    comp["CUDA context + fragmentation"] = 3 * GIB + 0.05 * subtotal
    gb = {k: v / 1e9 for k, v in comp.items()}
    total = sum(gb.values())
    fits = total <= gpu_mem_gb
    big = sorted(gb.items(), key=lambda kv: -kv[1])[:3]
    top = ", ".join(f"{k} {v:.1f} GB" for k, v in big)
    if fits:
        why = f"{total:.1f} GB of {gpu_mem_gb:g} GB per GPU ({gpu_mem_gb - total:.1f} GB spare); largest: {top}"
    else:
        why = f"needs {total:.1f} GB per GPU but has {gpu_mem_gb:g} GB; largest: {top}."
        hints = []
        if not lora and n < gpus:
            hints.append(f"--learner-procs {gpus} (shard over all GPUs)")
        if not lora and n == 1:
            hints.append("more GPUs with FSDP (--learner-procs N)")
        if not lc.optimizer_offload and not lora:
            hints.append("learner.optimizer_offload: true")
        if not lora:
            hints.append("LoRA (learner.lora)")
        if not lc.gradient_checkpointing:
            hints.append("learner.gradient_checkpointing: true")
        why += " Try: " + "; ".join(hints) if hints else ""
    return MemoryPlan(
        model=shape.name, params_b=p / 1e9, gpus=gpus, gpu_mem_gb=gpu_mem_gb, learner_procs=n, mode=mode,
        per_gpu_gb={k: round(v, 3) for k, v in gb.items()}, total_gb=round(total, 3), fits=fits, why=why,
        host_gb={k: round(v / 1e9, 3) for k, v in host.items()}, notes=notes, shape_source=shape.source,
        placement=placement.to_dict() if placement is not None else None,
    )


# ---------------------------------------------------------------------------- host memory (CPU runs)
# Resident set of the trainer process before any model: CPython with torch, transformers, gymnasium
# and this project imported, plus the allocator's arenas. Measured with /usr/bin/time -v on
# configs/smoke_cpu.yaml (a 43k-parameter model, so nearly all of its 0.455 GB peak is this) and at the
# start of configs/demo_cpu.yaml (0.41 GB before the model loads), torch 2.13 / transformers 5.
RUNTIME_BYTES = 0.43e9
# A Ray driver (distributed.backend: ray) holds Ray's core worker and client state on top: 0.54 GB
# peak for the smoke config with --learner-procs 3 under local Ray vs 0.44 GB without Ray.
RAY_DRIVER_BYTES = 0.1e9
DEFAULT_PROMPT_TOKENS = 1024  # planned prompt length of a turn when rollout.*.max_prompt_tokens is unset


def _dtype_bytes(dtype: str, default: int = 4) -> int:
    return {"float32": 4, "float16": 2, "bfloat16": 2}.get(str(dtype), default)


def host_memory_total_gb() -> float:
    """This machine's memory in GB (0 where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):
        return 0.0


def plan_host_memory(config: Any, *, learner_procs: int | None = None, host_mem_gb: float | None = None,
                     placement: Any = None) -> MemoryPlan:
    """The peak resident memory of the trainer process of a CPU run (see module doc)."""
    lc = config.learner
    d = config.distributed
    pc = config.policy
    r = config.rollout
    n = int(learner_procs or getattr(d, "learner_procs", 1) or 1)
    notes: list[str] = []
    engine_dtype = _dtype_bytes(pc.dtype)  # "auto" on the CPU loads fp32
    learn_dtype = engine_dtype if lc.dtype == "auto" else _dtype_bytes(lc.dtype)
    shapes = {"designer": model_shape(pc.model)}
    if pc.executor_model:
        shapes["executor"] = model_shape(pc.executor_model)
    serving = {role: str(spec).startswith("vllm:") for role, spec in
               (("designer", pc.model), ("executor", pc.executor_model or pc.model))}
    lora = lc.lora is not None
    r_lora = int((lc.lora or {}).get("r", 16))
    resident: dict[str, float] = {"runtime (python, torch, transformers)": RUNTIME_BYTES}
    if d.backend == "ray":
        resident["Ray driver (core worker)"] = RAY_DRIVER_BYTES
    # Learners (one per distinct model) and what each keeps.
    trained: dict[str, int] = {}
    for role, shape in shapes.items():
        p = shape.params()
        label = "" if len(shapes) == 1 else f" ({role})"
        if serving[role]:  # a weight-serving engine: its own copy; the learner an fp32 one of its own
            resident[f"engine weights (vLLM){label}"] = engine_dtype * p
            learner_own = 4
        elif learn_dtype != engine_dtype or n > 1:  # the learner trains a private copy (or FSDP shards)
            resident[f"engine weights{label}"] = engine_dtype * p
            learner_own = learn_dtype
        else:  # the learner trains the engine's own model object: one copy
            learner_own = 0
            resident[f"model weights (engine = learner){label}"] = engine_dtype * p
        if n > 1:
            resident[f"fp32 master shards{label}"] = 4 * p / n
        elif learner_own:
            resident[f"learner weights{label}"] = learner_own * p
        if n == 1 and min(learner_own or engine_dtype, 4) < 4 and lc.master_weights == "auto" and not lora:
            resident[f"fp32 master weights{label}"] = 4 * p
        trained[role] = shape.lora_params(r_lora) if lora else p
    scale = n if not lora else 1
    moments = {role: 8 * t / scale for role, t in trained.items()}
    stagewise_per_role = config.schedule.mode == "stagewise" and lc.phase_optimizer == "per_role"
    park_disk = lc.park_optimizer in ("auto", "disk")  # auto: disk on the CPU
    # A shared policy has one optimizer whose state is per phase; split policies one per role, each
    # keeping its own moments between its phases.
    for role, m in moments.items():
        label = "" if len(moments) == 1 else f" ({role})"
        resident[f"AdamW moments, active phase{label}"] = m
        if stagewise_per_role and len(moments) == 1:
            if park_disk:
                notes.append("learner.park_optimizer: the inactive phase's AdamW moments are parked on disk "
                             f"({m / 1e9:.2f} GB file), not resident")
            else:
                resident[f"AdamW moments, parked phase{label}"] = m
    if lc.kl_coef != 0.0 and not lora:
        for role, shape in shapes.items():
            resident[f"KL reference model ({role})"] = learn_dtype * shape.params()
    big = max(shapes.values(), key=lambda s: s.params())
    t = lc.micro_batch_tokens
    act_bytes = learn_dtype
    layer_full = act_bytes * t * (2 * big.hidden + 3 * big.q_dim + 2 * big.kv_dim + 4 * big.intermediate)
    # One layer's attention probabilities while it computes: T tokens against a sequence's length.
    seq = min(t, max(r.designer.max_prompt_tokens or DEFAULT_PROMPT_TOKENS,
                     r.executor.max_prompt_tokens or DEFAULT_PROMPT_TOKENS)
              + max(r.designer.max_new_tokens, r.executor.max_new_tokens))
    attn_probs = 4 * big.heads * t * seq
    if lc.gradient_checkpointing:
        acts = act_bytes * t * big.hidden * big.layers + layer_full + attn_probs
        act_key = "activations (checkpointed)"
    else:
        acts = layer_full * big.layers + attn_probs
        act_key = "activations (no checkpointing)"
    chunk = min(lc.logits_chunk_tokens or t, t)
    logits = 3 * 4 * chunk * big.vocab
    grads = 4 * max(trained.values()) / scale
    update = {"gradients (fp32)": grads, act_key: acts, f"logits chunk ({chunk} tok)": logits}
    phases: dict[str, dict[str, float]] = {"update": update}
    ws = config.warm_start
    if (ws.designs or ws.data) and ws.steps > 0:
        # Before RL: no RL moments yet, the SFT learner's own instead (released after the cold start).
        rl_moments = sum(moments.values())
        sft = {"gradients (fp32)": grads, "warm-start AdamW": 8 * trained["designer"] / scale, act_key: acts,
               f"logits chunk ({chunk} tok)": logits, "(no RL moments yet)": -rl_moments}
        phases["warm start"] = sft
    async_k = r.async_.max_staleness if r.async_ is not None else None
    rl_only: set[str] = set()  # resident terms made when RL starts, after the warm start
    if d.backend == "local":
        prompt = max(r.designer.max_prompt_tokens or DEFAULT_PROMPT_TOKENS,
                     r.executor.max_prompt_tokens or DEFAULT_PROMPT_TOKENS)
        reply = max(r.designer.max_new_tokens, r.executor.max_new_tokens)
        seqs = min(pc.max_batch_size, r.tasks_per_step * r.designs * r.executions)
        ek = pc.engine_kwargs or {}
        rollout: dict[str, float] = {}
        for role, sh in shapes.items():
            label = "" if len(shapes) == 1 else f" ({role})"
            kv = seqs * (prompt + reply) * 2 * sh.layers * sh.kv_dim * engine_dtype
            if not serving[role]:  # an HF engine bounds its running batch by kv_cache_mb (1024 MiB on the CPU)
                kv = min(kv, float(ek.get("kv_cache_mb") or 1024.0) * 2**20)
            rollout[f"KV cache ({seqs} seqs x {prompt + reply} tok){label}"] = kv
        phases["rollout"] = rollout
        spec = ek.get("speculative")
        if spec and not all(serving.values()):
            # the HF engine's n-gram history (mx_agents/backends/drafts.py): ~160 B per token held
            # (tracemalloc: 31 MiB for 200k tokens), kept from one rollout to the next
            held = 200_000 if spec is True else int(dict(spec).get("history_tokens", 200_000))
            key = f"draft history (speculative, {held} tok)"
            resident[key] = DRAFT_HISTORY_BYTES_PER_TOKEN * held
            rl_only.add(key)
    if async_k and d.backend == "local":
        for role, s in shapes.items():
            if not serving[role]:  # the engine samples with a copy of its own (mx_train/async_rollout.py)
                label = "" if len(shapes) == 1 else f" ({role})"
                key = f"engine weights copy (async, max_staleness {async_k}){label}"
                resident[key] = engine_dtype * s.params()
                rl_only.add(key)
    if rl_only and "warm start" in phases:
        phases["warm start"]["(no async engine copy or draft history yet)"] = -sum(resident[k] for k in rl_only)
    peak_phase = max(phases, key=lambda k: sum(phases[k].values()))
    terms = dict(resident)
    for k, v in phases[peak_phase].items():
        if v > 0:
            terms[f"{k} [{peak_phase}]"] = v
    rl_free = phases[peak_phase].get("(no RL moments yet)", 0.0)
    if rl_free:
        for k in list(terms):
            if k.startswith("AdamW moments") or k in rl_only:
                terms[k] = 0.0  # not yet created during the warm start
    total = sum(terms.values()) / 1e9
    budget = float(host_mem_gb) if host_mem_gb is not None else host_memory_total_gb()
    fits = budget <= 0 or total <= budget
    others = ", ".join(f"{k} {sum(v.values()) / 1e9 + sum(resident.values()) / 1e9:.2f} GB"
                       for k, v in phases.items() if k != peak_phase)
    why = (f"{total:.2f} GB peak in the {peak_phase} phase" + (f" (other phases: {others})" if others else "")
           + f" of {budget:.1f} GB host memory")
    if not fits:
        hints = ["learner.gradient_checkpointing: true"] if not lc.gradient_checkpointing else []
        hints += [f"learner.micro_batch_tokens below {t}", "learner.logits_chunk_tokens: 256"]
        if not park_disk and stagewise_per_role:
            hints.append("learner.park_optimizer: disk")
        why = "DOES NOT FIT: " + why + ". Try: " + "; ".join(hints)
    host: dict[str, float] = {}
    if d.backend == "ray":
        prompt = max(r.designer.max_prompt_tokens or DEFAULT_PROMPT_TOKENS,
                     r.executor.max_prompt_tokens or DEFAULT_PROMPT_TOKENS)
        reply = max(r.designer.max_new_tokens, r.executor.max_new_tokens)
        per_worker_tasks = -(-r.tasks_per_step // max(1, d.num_rollout_workers))
        seqs = min(pc.max_batch_size, per_worker_tasks * r.designs * r.executions)
        worker = RUNTIME_BYTES + sum(engine_dtype * s.params() + seqs * (prompt + reply) * 2 * s.layers * s.kv_dim
                                     * engine_dtype for s in shapes.values())
        host[f"each Ray rollout worker process (x{d.num_rollout_workers})"] = worker
    if n > 1:
        notes.append(f"learner ranks 1..{n - 1} are processes of their own: runtime + their shards "
                     f"(~{(RUNTIME_BYTES + 16 * max(trained.values()) / n) / 1e9:.2f} GB each)")
    mode = ("LoRA" if lora else "full fine-tune") + f", {'FSDP over ' + str(n) + ' processes' if n > 1 else '1 process'}"
    mode += ", shared policy" if len(shapes) == 1 else ", split policy"
    return MemoryPlan(
        model=big.name, params_b=sum(s.params() for s in shapes.values()) / 1e9, gpus=0, gpu_mem_gb=round(budget, 1),
        learner_procs=n, mode=mode, per_gpu_gb={k: round(v / 1e9, 3) for k, v in terms.items()},
        total_gb=round(total, 3), fits=fits, why=why.removeprefix("DOES NOT FIT: "),
        host_gb={k: round(v / 1e9, 3) for k, v in host.items()}, notes=notes, shape_source=big.source, device="cpu",
        placement=placement.to_dict() if placement is not None else None,
    )
