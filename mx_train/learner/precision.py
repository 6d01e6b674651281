"""fp32 master weights for a model trained in a lower-precision dtype (single-process path).

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

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


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
