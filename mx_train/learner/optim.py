"""AdamW, its LR schedule, and optimizer state per co-evolution phase.

Stagewise co-evolution trains the executor for K steps, then the designer for K steps, with one
model. One AdamW state across both phases is wrong: when the designer phase starts, the first moment
still holds the executor's gradient direction, so AdamW keeps moving the weights along the
executor's objective for dozens of steps, even on a designer batch whose gradient is exactly zero
(measured: 99.6 % of parameters changed across such a step). Two remedies, ``phase_optimizer``:

* ``per_role`` (default): one AdamW state per phase (the set of active roles). At a switch the
  leaving phase's moments are parked (on CPU when training on a GPU) and the arriving phase's are
  restored, so each role's optimizer behaves as if it had seen only its own steps. Chosen because
  the two roles' gradients differ in scale and direction (a few long design sequences vs many short
  sub-agent turns): a role's second-moment estimate stays calibrated to its own gradients, and no
  phase restarts Adam's bias-corrected warm-up, in which every weight moves by about ``lr`` whatever
  its gradient's size. Cost: one extra fp32 AdamW state (8 bytes per trained parameter) in host
  memory, or on disk (``park_optimizer``: a temporary file written at the switch and read back
  at the next one; the default when training on the CPU, where host memory is the training memory).
* ``reset``: fresh moments at every switch (no extra memory; each phase re-warms Adam).

The LR schedule counts optimizer steps of the learner across phases (one schedule per learner).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from mx_train.learner.config import LearnerConfig

# The entry that names a parked phase saved as a file of its own (PhaseOptimizer.parked_as_files).
PARKED_FILE = "parked_file"


def lr_lambda(cfg: LearnerConfig) -> Callable[[int], float]:
    def f(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.lr_schedule == "constant":
            return 1.0
        total = max(int(cfg.total_steps or 1) - cfg.warmup_steps, 1)
        progress = min(max(step - cfg.warmup_steps, 0) / total, 1.0)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def _park(value: Any) -> Any:
    """A state tensor moved to host memory (DTensors keep their layout for the way back)."""
    import torch

    if not isinstance(value, torch.Tensor) or value.device.type == "cpu":
        return value
    local = getattr(value, "_local_tensor", None)
    if local is not None:
        return ("dtensor", local.to("cpu"), value.device_mesh, value.placements, value.shape, value.stride())
    return ("tensor", value.to("cpu"), value.device)


def _unpark(value: Any) -> Any:
    if not isinstance(value, tuple):
        return value
    if value[0] == "dtensor":
        from torch.distributed.tensor import DTensor

        _, local, mesh, placements, shape, stride = value
        return DTensor.from_local(local.to(mesh.device_type), mesh, placements, shape=shape, stride=stride)
    _, t, device = value
    return t.to(device)


class _Spilled:
    """A parked phase's optimizer state in a file: per-parameter states keyed by parameter index."""

    def __init__(self, path: str) -> None:
        self.path = path

    def load(self, params: list[Any]) -> dict[Any, dict[str, Any]]:
        import torch

        by_index = torch.load(self.path, weights_only=True)
        return {params[i]: s for i, s in by_index.items()}


def _is_dtensor_state(state: Mapping[Any, Mapping[str, Any]]) -> bool:
    return any(getattr(v, "_local_tensor", None) is not None or isinstance(v, tuple)
               for s in state.values() for v in s.values())


class PhaseOptimizer:
    """AdamW + LambdaLR whose moments are kept per phase (see module doc)."""

    def __init__(self, params: Iterable[torch.Tensor], cfg: LearnerConfig) -> None:
        import torch

        self.optimizer = torch.optim.AdamW(
            list(params), lr=cfg.lr, betas=cfg.betas, eps=cfg.adam_eps, weight_decay=cfg.weight_decay
        )
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg))
        self.mode = cfg.phase_optimizer
        self.phase: str | None = None
        self.parked: dict[str, Any] = {}  # phase -> {param: state} in memory, or a _Spilled file
        self.switches = 0
        on_cpu = all(p.device.type == "cpu" for p in self.params)
        park = getattr(cfg, "park_optimizer", "auto")
        self.park_to_disk = park == "disk" or (park == "auto" and on_cpu)
        self._spill_dir: str | None = None
        self._files_into: tuple[str, str] | None = None

    @property
    def params(self) -> list[torch.Tensor]:
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    def switch(self, phase: str) -> bool:
        """Make ``phase`` current; True when the optimizer state changed."""
        if phase == self.phase:
            return False
        if self.phase is not None and self.mode == "per_role":
            leaving = {p: {k: _park(v) for k, v in s.items()} for p, s in self.optimizer.state.items()}
            self.optimizer.state = defaultdict(dict)  # drop our references before the spill frees them
            self.parked[self.phase] = self._spill(self.phase, leaving)
            # Spilled: the leaving moments must be gone before the arriving ones are read back, or
            # both phases' moments are resident at once (the demo's update-phase peak, issue 20).
            del leaving
        arriving = self._unspill(self.parked.pop(phase, None)) if self.mode == "per_role" else None
        fresh: defaultdict[Any, dict[str, Any]] = defaultdict(dict)
        for p, s in (arriving or {}).items():
            fresh[p] = {k: _unpark(v) for k, v in s.items()}
        self.optimizer.state = fresh
        changed = self.phase is not None
        self.phase = phase
        self.switches += int(changed)
        return changed

    # -- parking on disk -------------------------------------------------------------------------
    def _spill(self, phase: str, state: dict[Any, dict[str, Any]]) -> Any:
        """``state`` written to a file when parking on disk (plain CPU tensors only), else itself."""
        import torch

        if not self.park_to_disk or not state or _is_dtensor_state(state):
            return state
        if self._spill_dir is None:
            self._spill_dir = tempfile.mkdtemp(prefix="mx-parked-optimizer-")
            weakref.finalize(self, shutil.rmtree, self._spill_dir, True)
        index = {id(p): i for i, p in enumerate(self.params)}
        path = os.path.join(self._spill_dir, f"{phase}.pt")
        torch.save({index[id(p)]: s for p, s in state.items()}, path)
        return _Spilled(path)

    def _unspill(self, parked: Any) -> Any:
        if isinstance(parked, _Spilled):
            state = parked.load(self.params)
            os.unlink(parked.path)
            return state
        return parked

    def clear_parked(self) -> None:
        for parked in self.parked.values():
            if isinstance(parked, _Spilled) and os.path.exists(parked.path):
                os.unlink(parked.path)
        self.parked.clear()

    def step(self) -> None:
        self.optimizer.step()
        self.lr_scheduler.step()

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def current_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def set_lr(self, lr: float) -> None:
        """Overwrite the base LR (the schedule's factor still applies from the next step)."""
        self.lr_scheduler.base_lrs = [lr for _ in self.lr_scheduler.base_lrs]
        factor = self.lr_scheduler.lr_lambdas[0](max(self.lr_scheduler.last_epoch, 0))
        for g in self.optimizer.param_groups:
            g["lr"] = lr * factor
            g["initial_lr"] = lr

    # -- checkpoints ------------------------------------------------------------------------
    def _serialise(self, state: Mapping[Any, Any]) -> dict[str, Any]:
        current = self.optimizer.state
        self.optimizer.state = defaultdict(dict, {p: {k: _unpark(v) for k, v in s.items()} for p, s in state.items()})
        try:
            return self.optimizer.state_dict()["state"]
        finally:
            self.optimizer.state = current

    @contextlib.contextmanager
    def parked_as_files(self, dest: str | os.PathLike[str], stem: str) -> Iterator[None]:
        """While active, :meth:`state_dict` writes each phase parked on disk as a file of its own in
        ``dest`` (``{stem}.parked-{phase}.pt``, a hard link or a copy of the spill file) and names it,
        instead of reading it back: a checkpoint then never holds two phases' moments in memory at
        once (with a 135M model on CPU, 1.08 GB more at every full save).
        :meth:`load_state_dict` accepts such a name as an absolute path (see ``checkpoint.restore``)."""
        self._files_into = (os.fspath(dest), stem)
        try:
            yield
        finally:
            self._files_into = None

    def _parked_entry(self, phase: str, parked: Any) -> Any:
        into = self._files_into
        if not isinstance(parked, _Spilled):
            return self._serialise(parked)
        if into is None:  # read back (no activations live at a checkpoint)
            return self._serialise(parked.load(self.params))
        name = f"{into[1]}.parked-{phase}.pt"
        target = os.path.join(into[0], name)
        try:
            os.link(parked.path, target)
        except OSError:  # another file system (tmp vs the run dir)
            shutil.copyfile(parked.path, target)
        return {PARKED_FILE: name}

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "phase": self.phase,
            "parked": {k: self._parked_entry(k, v) for k, v in self.parked.items()},
        }

    def _adopt_file(self, phase: str, path: str) -> bool:
        """Take a parked phase saved as a file as this optimizer's spill, without reading it."""
        if not self.park_to_disk:
            return False
        if self._spill_dir is None:
            self._spill_dir = tempfile.mkdtemp(prefix="mx-parked-optimizer-")
            weakref.finalize(self, shutil.rmtree, self._spill_dir, True)
        own = os.path.join(self._spill_dir, f"{phase}.pt")
        shutil.copyfile(path, own)  # never a link: the spill file is deleted when the phase returns
        self.parked[phase] = _Spilled(own)
        return True

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        groups = self.optimizer.state_dict()["param_groups"]
        self.clear_parked()
        for phase, st in (state.get("parked") or {}).items():
            if isinstance(st, Mapping) and PARKED_FILE in st:
                path = str(st[PARKED_FILE])
                if not os.path.isabs(path):
                    raise ValueError(f"parked optimizer state of phase {phase!r} names a file {path!r} "
                                     "that was not resolved against its checkpoint (checkpoint.restore does)")
                if self._adopt_file(phase, path):
                    continue
                import torch

                st = torch.load(path, map_location="cpu", weights_only=True)
            self.optimizer.load_state_dict({"state": st, "param_groups": groups})
            parked = {p: {k: _park(v) for k, v in s.items()} for p, s in self.optimizer.state.items()}
            self.optimizer.state = defaultdict(dict)
            self.parked[phase] = self._spill(phase, parked)
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.phase = state.get("phase")
