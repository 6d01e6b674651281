"""Per-GPU memory plan of a training config: what the learner and a colocated engine need, and
whether it fits (``mx train --config F --dry-run [--gpus N --gpu-mem-gb G] [--json]``).

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
"""

from __future__ import annotations

import json
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def render(self) -> str:
        lines = [
            f"memory plan: {self.model} ({self.params_b:.2f}B params, shapes from {self.shape_source}), "
            f"{self.mode}, {self.learner_procs} learner process(es) on {self.gpus} x {self.gpu_mem_gb:g} GB",
            "per GPU (rank 0, the busiest):",
        ]
        for k, v in self.per_gpu_gb.items():
            lines.append(f"  {k:<28} {v:9.2f} GB")
        lines.append(f"  {'total':<28} {self.total_gb:9.2f} GB of {self.gpu_mem_gb:g} GB")
        for k, v in self.host_gb.items():
            lines.append(f"  host: {k:<22} {v:9.2f} GB")
        lines.append(("FITS: " if self.fits else "DOES NOT FIT: ") + self.why)
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


def plan_memory(config: Any, *, gpus: int | None = None, gpu_mem_gb: float | None = None,
                learner_procs: int | None = None) -> MemoryPlan:
    """The per-GPU plan of a :class:`~mx_train.config.TrainConfig` (see module doc)."""
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
    engines = (1 if d.backend == "local" else 0) + (1 if ray_here else 0)
    weight_copies = (0 if engine_shares else 1) + (1 if ray_here else 0)
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
    )
