"""The policy learner: PPO/GRPO-style updates of a Hugging Face causal LM from transitions.

One class owns state, :class:`Learner` (:mod:`.core`: the model, its AdamW optimizer with state per
co-evolution phase, LR schedule, fp32 masters, the policy update and the SFT step); the rest are
pure functions and small value types, one concern per module:

* :mod:`.config` -- :class:`LearnerConfig` (a YAML ``learner:`` block; extends the loss settings);
* :mod:`.losses` -- policy losses, KL estimators and off-policy corrections (registries),
  aggregation, the objective;
* :mod:`.collation` -- transitions to token-budget micro-batches: packed rows without padding
  (a 4-D block-diagonal mask, shared prefixes computed once) or the aligned layout
  ``[left pad | prompt | response | right pad]`` (the shared :func:`mx_agents.batching.left_pad`),
  the plan of an update's optimizer steps and its normalising counts;
* :mod:`.logprobs` -- per-token log-probs and entropy in LM-head chunks (no full fp32 logits);
* :mod:`.precision` -- the compute dtype (bf16 where the hardware has it), fp32 master weights;
* :mod:`.optim` -- AdamW, LR schedule, per-phase optimizer state;
* :mod:`.lora` -- peft wrapping and merged weights;
* :mod:`.policy_group` -- which learner trains which role;
* :mod:`.fsdp` -- the same learner sharded over processes (FSDP2), the learner group and its launch.

Log-probs are computed from ``logits / temperature``, the same distribution a backend samples from
at that temperature. Dropout is not used during updates (the model stays in eval mode unless
gradient checkpointing needs train mode), so on-policy ratios are exactly 1.
"""

from mx_train.learner.collation import SequenceLike, pack_by_tokens
from mx_train.learner.config import LearnerConfig
from mx_train.learner.core import Learner, WeightSync
from mx_train.learner.policy_group import PolicyGroup

__all__ = ["Learner", "LearnerConfig", "PolicyGroup", "SequenceLike", "WeightSync", "pack_by_tokens"]
