"""Compute precision of the learner, and fp32 master weights for a model trained in a lower dtype.

**Which compute dtype** (:func:`resolve_compute`, the ``learner.dtype`` setting):

* ``auto`` on an fp32 model: bf16 *autocast* where the hardware computes bf16 natively -- a CUDA
  GPU with bf16, or a CPU with ``avx512_bf16`` or AMX (:func:`cpu_has_bf16`) -- else fp32. Under
  autocast the fp32 parameters are the master weights and the optimizer state is fp32: nothing is
  copied, and an engine that shares the model keeps generating in its own dtype (fp32). Without
  native bf16 (this development machine's CPU has neither flag) bf16 is emulated and slower than
  fp32, so fp32 stays the default there. ``MX_CPU_BF16=0/1`` overrides the CPU detection (the test
  suite pins it to 0 so its exact comparisons do not depend on the host).
* ``auto`` on a bf16 (or fp16) model: compute in the model's dtype, with fp32 masters (below).
* ``float32``: fp32 compute, never autocast (a private fp32 copy of a lower-precision model).
* ``bfloat16``: a private bf16 copy of an fp32 model (the model given keeps its dtype) computes,
  fp32 masters are stepped.

**fp32 master weights** for a model whose trained parameters are below fp32:

Why: bf16 has 8 significant bits. A weight of 0.02 has a bf16 spacing of ~1.2e-4, so an AdamW step
of lr 5e-6 (Adam's first steps move each weight by about lr) rounds back to 0.02: most updates of
the paper's recipe would be lost, and bf16 Adam moments lose the small second moments too. The
learner therefore keeps an fp32 copy of every trained parameter (the *master*), lets AdamW (fp32
state) step the master from the fp32-cast gradient, and writes the rounded result back into the
bf16 model that computes forward/backward and serves rollouts. Steps below the bf16 spacing
accumulate in the master until they cross it.

Under FSDP2 the sharded fp32 parameters are the masters (``MixedPrecisionPolicy``), so this class
is not used there.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

CPU_BF16_ENV = "MX_CPU_BF16"
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=1)
def _cpuinfo_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return any(flag in flags for flag in CPU_BF16_FLAGS)
    except OSError:
        pass
    return False


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (``avx512_bf16`` or AMX in ``/proc/cpuinfo``);
    ``MX_CPU_BF16=0`` / ``1`` overrides the detection."""
    forced = os.environ.get(CPU_BF16_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return _cpuinfo_has_bf16()


def device_has_bf16(device: torch.device) -> bool:
    """Native bf16 compute on ``device`` (a CUDA GPU that supports it, or :func:`cpu_has_bf16`)."""
    import torch

    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return cpu_has_bf16()
    return False


def resolve_compute(setting: str, model_dtype: torch.dtype, device: torch.device) -> tuple[torch.dtype, bool]:
    """``(parameter dtype the learner trains, bf16 autocast on?)`` for ``learner.dtype = setting``
    (see module doc)."""
    import torch

    if setting == "float32":
        return torch.float32, False
    if setting == "bfloat16":
        return torch.bfloat16, False
    if model_dtype == torch.float32:
        return torch.float32, device_has_bf16(device)
    return model_dtype, False


class MasterWeights:
    """fp32 copies of ``params`` (on ``device``; CPU for optimizer offload) and their sync."""

    def __init__(self, params: Sequence[torch.Tensor], device: torch.device) -> None:
        import torch

        self.params = list(params)
        with torch.no_grad():
            self.masters = [
                torch.nn.Parameter(p.detach().to(device=device, dtype=torch.float32, copy=True)) for p in self.params
            ]

    def grads_to_master(self) -> bool:
        """Move the model's gradients onto the masters (fp32); the model's grads are freed.
        Returns False when no parameter has a gradient."""
        import torch

        any_grad = False
        for p, m in zip(self.params, self.masters, strict=True):
            if p.grad is None:
                m.grad = None
                continue
            any_grad = True
            m.grad = p.grad.detach().to(device=m.device, dtype=torch.float32)
            p.grad = None
        return any_grad

    def master_to_model(self) -> None:
        import torch

        with torch.no_grad():
            for p, m in zip(self.params, self.masters, strict=True):
                p.copy_(m.to(device=p.device, dtype=p.dtype))

    def model_to_master(self) -> None:
        """Reload the masters from the model (after something else wrote the model's weights)."""
        import torch

        with torch.no_grad():
            for p, m in zip(self.params, self.masters, strict=True):
                m.copy_(p.detach().to(device=m.device, dtype=torch.float32))

    def load_from(self, params: Sequence[torch.Tensor]) -> None:
        """Set the masters to ``params`` (same order and shapes; e.g. the fp32 weights a
        lower-precision copy was made from) and write them into the model."""
        import torch

        params = list(params)
        if len(params) != len(self.masters):
            raise ValueError(f"{len(params)} tensors for {len(self.masters)} master weights")
        with torch.no_grad():
            for m, p in zip(self.masters, params, strict=True):
                m.copy_(p.detach().to(device=m.device, dtype=torch.float32))
        self.master_to_model()

    def zero_grad(self) -> None:
        for m in self.masters:
            m.grad = None

    def state_dict(self) -> list[torch.Tensor]:
        return [m.detach().cpu().clone() for m in self.masters]

    def load_state_dict(self, tensors: Sequence[torch.Tensor]) -> None:
        import torch

        if len(tensors) != len(self.masters):
            raise ValueError(f"{len(tensors)} master tensors for {len(self.masters)} parameters")
        with torch.no_grad():
            for m, t in zip(self.masters, tensors, strict=True):
                m.copy_(t.to(device=m.device, dtype=torch.float32))
        self.master_to_model()
