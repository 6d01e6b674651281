"""Settings of one learner (:class:`LearnerConfig`): flat, so a YAML ``learner:`` block maps onto it.

Built once (by :class:`mx_train.config.TrainConfig` from the YAML block, or by the caller) and
passed as is: the learner, its optimizer and a derived learner (:meth:`Learner.derive`) read the
same frozen object or a :func:`dataclasses.replace` of it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mx_train.learner.losses import LossSettings

OLD_LOGPROBS = ("auto", "recompute", "sampling", "current")
PHASE_OPTIMIZER = ("per_role", "reset")
PACKING = ("auto", "on", "off")
PHASE_KEYS = ("designer", "executor", "designer+executor", "all")


@dataclass(frozen=True)
class LearnerConfig(LossSettings):
    """Optimisation, loss, precision and memory settings of one learner. The loss fields
    (``policy_loss``, ``loss_agg``, ``clip_low``, ``clip_high``, ``kl_coef``, ``kl_estimator``,
    ``entropy_coef``) are those of :class:`~mx_train.learner.losses.LossSettings`, which this extends.

    Precision: ``dtype`` is the *compute* dtype (:func:`mx_train.learner.precision.resolve_compute`).
    ``"auto"`` never changes the model it was given (the rollout engine's, when shared): an fp32
    model computes under bf16 autocast where the hardware has native bf16 (CUDA, a CPU with
    avx512_bf16/AMX), else in fp32; a bf16 model computes in bf16. ``"float32"`` / ``"bfloat16"``
    train a private copy in that dtype when the model's differs (then the trainer syncs weights into
    the engine). Whenever the trained parameters are below fp32, the optimizer steps fp32 *master*
    weights (``master_weights: auto``), so a step of 5e-6 on a weight of 0.02 is kept instead of
    rounding back to 0.02 in bf16. Under FSDP the sharded parameters are the fp32 masters and
    ``dtype: bfloat16`` is the mixed-precision compute dtype (``auto`` computes in fp32 there).

    Layout: ``packing`` (``auto``: packed rows where the model takes a 4-D attention mask, see
    :func:`mx_train.learner.collation.packing_support`; ``on``: required; ``off``: the aligned,
    padded layout) and ``shared_prefix_tokens`` (packed only: sequences sharing a prefix of at
    least that many tokens compute it once; 0 = off).
    """

    lr: float = 1e-6
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    warmup_steps: int = 0
    lr_schedule: str = "constant"  # "constant" | "cosine" (after warmup)
    total_steps: int | None = None  # needed by "cosine"
    min_lr_ratio: float = 0.0  # cosine floor, as a fraction of lr
    max_grad_norm: float | None = 1.0
    micro_batch_tokens: int = 4096  # token positions per forward/backward (padding included)
    packing: str = "auto"  # "auto" | "on" | "off" (YAML true/false map to on/off)
    # Packed only: turns sharing a prefix of at least this many tokens compute it once (0 = off).
    # The N executions of a design repeat its system prompt, task and script, the M designs the
    # designer prompt: on a demo step's executor batch this computes 426 positions for 2221 tokens.
    shared_prefix_tokens: int = 32
    mini_batches: int = 1  # optimizer steps per epoch over the update batch (PPO-style)
    mini_batch_size: int | None = None  # sequences per optimizer step; overrides mini_batches
    ppo_epochs: int = 1  # passes over the update batch (reshuffled after the first)
    log_entropy: bool = True  # entropy as a metric (no graph unless entropy_coef != 0)
    norm_length: int | None = None  # seq_mean_token_sum_norm constant; default: longest response
    # "auto": one mini-batch and one epoch -> "current", else "recompute". "current": the detached
    # log-probs of the training forward itself (on-policy: ratio 1, no extra pass). "sampling": the
    # sampler's log-probs (corrects engine/learner mismatch; both at the turn's recorded temperature).
    old_logprobs: str = "auto"
    logits_chunk_tokens: int = 1024  # response positions per lm-head chunk; 0 = full logits (old path)
    device: str = "auto"
    dtype: str = "auto"  # compute dtype: "auto" (the model's) | "float32" | "bfloat16"
    master_weights: str = "auto"  # "auto": fp32 masters when trained params are below fp32 | "none"
    optimizer_offload: bool = False  # fp32 masters + AdamW state on CPU (FSDP: CPUOffloadPolicy)
    # Optimizer state across co-evolution phases: "per_role" keeps one AdamW state per active-role
    # set (the inactive one parked on CPU); "reset" starts fresh moments at every switch.
    phase_optimizer: str = "per_role"
    # Where "per_role" keeps the inactive phase's AdamW state: "memory", "disk" (a temporary file,
    # read back at the next switch: exact), or "auto" = disk when training on the CPU (there host
    # memory *is* the training memory: parked moments would keep two model-sized tensors resident
    # for nothing), memory on a GPU (host memory is the cheap place to park).
    park_optimizer: str = "auto"
    # Base LR per co-evolution phase, keyed by the active roles ("designer", "executor"); a phase not
    # listed uses ``lr``. The designer's action is a whole script whose sequence log-prob moves far
    # faster than an executor turn's at the same LR: a lower designer LR keeps its M designs per task
    # diverse for more than one update, so its group advantages do not vanish at once.
    phase_lr: dict[str, float] | None = None
    lora: dict[str, Any] | None = None  # peft.LoraConfig kwargs; None = full fine-tuning
    gradient_checkpointing: bool = False
    pad_token_id: int | None = None  # default: tokenizer/model config pad, else eos, else 0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> LearnerConfig:
        data = dict(data or {})
        known = {f.name for f in dataclasses.fields(cls)}
        _reject_retired(data)
        if unknown := sorted(set(data) - known):
            raise ValueError(f"unknown learner setting(s) {unknown}; known: {sorted(known)}")
        if "betas" in data:
            data["betas"] = tuple(data["betas"])
        if isinstance(data.get("packing"), bool):
            data["packing"] = "on" if data["packing"] else "off"
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> LearnerConfig:
        """A checked copy with ``changes`` (unknown names are an error, as in :meth:`from_dict`)."""
        known = {f.name for f in dataclasses.fields(self)}
        _reject_retired(changes)
        if unknown := sorted(set(changes) - known):
            raise ValueError(f"unknown learner setting(s) {unknown}; known: {sorted(known)}")
        out = dataclasses.replace(self, **changes)
        out.validate()
        return out

    def validate(self) -> None:
        super().validate()
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        if self.lr_schedule == "cosine" and not self.total_steps:
            raise ValueError("lr_schedule='cosine' needs total_steps")
        if self.old_logprobs not in OLD_LOGPROBS:
            raise ValueError(f"old_logprobs must be one of {OLD_LOGPROBS}, got {self.old_logprobs!r}")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"dtype must be 'auto', 'float32' or 'bfloat16', got {self.dtype!r}")
        if self.master_weights not in ("auto", "none"):
            raise ValueError(f"master_weights must be 'auto' or 'none', got {self.master_weights!r}")
        for key, value in (self.phase_lr or {}).items():
            if key not in PHASE_KEYS:
                raise ValueError(f"phase_lr key {key!r} is not a phase; known: {list(PHASE_KEYS)}")
            if not float(value) > 0:
                raise ValueError(f"phase_lr[{key!r}] must be > 0, got {value!r}")
        if self.park_optimizer not in ("auto", "memory", "disk"):
            raise ValueError(f"park_optimizer must be 'auto', 'memory' or 'disk', got {self.park_optimizer!r}")
        if self.phase_optimizer not in PHASE_OPTIMIZER:
            raise ValueError(f"phase_optimizer must be one of {PHASE_OPTIMIZER}, got {self.phase_optimizer!r}")
        if self.micro_batch_tokens < 1 or self.mini_batches < 1 or self.ppo_epochs < 1:
            raise ValueError("micro_batch_tokens, mini_batches and ppo_epochs must be >= 1")
        if self.mini_batch_size is not None and self.mini_batch_size < 1:
            raise ValueError("mini_batch_size must be >= 1 (or null)")
        if self.packing not in PACKING:
            raise ValueError(f"packing must be one of {PACKING}, got {self.packing!r}")
        if self.shared_prefix_tokens < 0:
            raise ValueError("shared_prefix_tokens must be >= 0 (0 = off)")
        if self.logits_chunk_tokens < 0:
            raise ValueError("logits_chunk_tokens must be >= 0 (0 = full logits)")

    def resolved_old_logprobs(self, n_mini: int) -> str:
        """What ``old_logprobs: auto`` means for an update of ``n_mini`` optimizer steps."""
        if self.old_logprobs != "auto":
            return self.old_logprobs
        return "current" if n_mini == 1 else "recompute"


RETIRED_TEMPERATURE = (
    "temperature is no longer a learner setting: each turn is scored at the temperature it was sampled "
    "at, recorded on its transition (metadata['temperature']; set it with rollout.designer/executor.temperature)"
)


def _reject_retired(data: Mapping[str, Any]) -> None:
    if "temperature" in data:
        raise ValueError(RETIRED_TEMPERATURE)
