"""Atomic training checkpoints and exact resume.

A checkpoint is a directory ``ROOT/step_00000012/`` (the number = completed training steps)::

    trainer_state.json     step, data position, schedule, python/numpy RNG states, extra
    rng.pt                 torch generator states (yours, plus torch's global CPU/CUDA ones)
    models/<name>/         weights (``save_pretrained`` safetensors; LoRA: the adapter only)
    learners/<name>.pt     optimizer, LR schedule, policy version

It is written into a hidden temporary directory and moved into place with ``os.replace`` (atomic
on POSIX), so a run killed at any moment leaves either the complete checkpoint or none; leftovers of
an interrupted write are ignored and cleaned up.

A **weights-only** checkpoint (``full=False``) holds ``models/`` (and the tokenizer) plus
``trainer_state.json`` with ``"full": false``: enough to evaluate or export the step's policy, at a
third of the size (no AdamW moments). A trainer writes those often and full ones (what ``--resume``
needs) less often. Only the newest ``keep_last`` checkpoints are kept, and always the newest full one
as well, so a run can resume whatever the mix.

Resume: ``ckpt = load_latest(ROOT)``; build the models/learners/schedule/RNGs as for a fresh run;
``ckpt.restore(models=..., learners=..., schedule=..., rngs=...)``; continue from ``ckpt.step`` with
``ckpt.data_position``.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_STEP_DIR = re.compile(r"^step_(\d{8,})$")


def _rng_state(obj: Any) -> tuple[str, Any]:
    import numpy as np

    if isinstance(obj, random.Random):
        version, state, gauss = obj.getstate()
        return "python", [version, list(state), gauss]
    if isinstance(obj, np.random.Generator):
        return "numpy", obj.bit_generator.state
    import torch

    if isinstance(obj, torch.Generator):
        return "torch", obj.get_state()
    raise TypeError(f"cannot checkpoint RNG of type {type(obj).__name__} (use random.Random, numpy Generator or torch.Generator)")


def _save_model(model: Any, out: Path, dtype: Any = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if dtype is not None:  # a copy in another dtype; tied tensors (lm_head = embed_tokens) once
        seen: set[int] = set()
        state = {}
        for k, v in model.state_dict().items():
            if v.data_ptr() not in seen:
                seen.add(v.data_ptr())
                state[k] = v.detach().to(dtype)
        model.save_pretrained(out, state_dict=state, safe_serialization=True)
        return
    try:
        model.save_pretrained(out, safe_serialization=True)
    except Exception:  # e.g. a model transformers loaded from GGUF refuses save_pretrained
        from safetensors.torch import save_model

        save_model(model, str(out / "model.safetensors"))


def _load_model(model: Any, src: Path) -> None:
    from safetensors.torch import load_file

    adapter = src / "adapter_model.safetensors"
    if adapter.exists():
        import peft

        peft.set_peft_model_state_dict(model, load_file(str(adapter)))
        return
    files = sorted(src.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no safetensors weights in {src}")
    state: dict[str, Any] = {}
    for f in files:
        state.update(load_file(str(f)))
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"checkpoint {src} has weights the model lacks: {result.unexpected_keys[:5]}")
    # Tied weights (e.g. lm_head = embed_tokens) are saved once; anything else missing is an error.
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded_ptrs = {params[k].data_ptr() for k in state if k in params}
    missing = [k for k in result.missing_keys if k not in params or params[k].data_ptr() not in loaded_ptrs]
    missing = [k for k in missing if k in params]  # buffers (rotary caches) are rebuilt by the model
    if missing:
        raise ValueError(f"checkpoint {src} lacks weights: {missing[:5]}")


@dataclass
class Checkpoint:
    """A complete checkpoint on disk (see module doc)."""

    path: Path
    step: int
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def full(self) -> bool:
        """Whether it holds optimizer and RNG states (resumable), not only weights."""
        return bool(self.state.get("full", True))

    @property
    def data_position(self) -> Any:
        return self.state.get("data_position")

    @property
    def extra(self) -> dict[str, Any]:
        return self.state.get("extra", {})

    def restore(
        self,
        *,
        models: Mapping[str, Any] | None = None,
        learners: Mapping[str, Any] | None = None,
        schedule: Any = None,
        rngs: Mapping[str, Any] | None = None,
        restore_global_torch_rng: bool = True,
    ) -> None:
        """Load everything saved into the given live objects (same names as at save time)."""
        import numpy as np
        import torch

        if not self.full and (learners or schedule is not None or rngs):
            raise ValueError(
                f"checkpoint {self.path} is weights-only: it restores models, not learners, schedule or RNGs "
                "(resume from a full checkpoint: load_latest(root) picks the newest one)"
            )
        for name, model in (models or {}).items():
            _load_model(model, self.path / "models" / name)
        if not self.full:
            return
        for name, learner in (learners or {}).items():
            f = self.path / "learners" / f"{name}.pt"
            learner.load_state_dict(_resolve_parked(torch.load(f, map_location="cpu", weights_only=True), f.parent))
        if schedule is not None:
            if "schedule" not in self.state:
                raise KeyError(f"checkpoint {self.path} has no schedule state")
            schedule.load_state_dict(self.state["schedule"])
        torch_states = torch.load(self.path / "rng.pt", map_location="cpu", weights_only=True)
        saved = self.state.get("rng", {})
        for name, obj in (rngs or {}).items():
            if name not in saved:
                raise KeyError(f"checkpoint {self.path} has no RNG state {name!r}; saved: {sorted(saved)}")
            kind, value = saved[name]["kind"], saved[name]["state"]
            if isinstance(obj, random.Random) and kind == "python":
                obj.setstate((value[0], tuple(value[1]), value[2]))
            elif isinstance(obj, np.random.Generator) and kind == "numpy":
                obj.bit_generator.state = value
            elif isinstance(obj, torch.Generator) and kind == "torch":
                obj.set_state(torch_states["generators"][name])
            else:
                raise TypeError(f"RNG {name!r} was saved as {kind}, cannot restore into {type(obj).__name__}")
        if restore_global_torch_rng:
            torch.set_rng_state(torch_states["global_cpu"])
            if torch.cuda.is_available() and torch_states.get("global_cuda"):
                torch.cuda.set_rng_state_all(torch_states["global_cuda"])


def save_checkpoint(
    root: str | os.PathLike[str],
    step: int,
    *,
    models: Mapping[str, Any] | None = None,
    learners: Mapping[str, Any] | None = None,
    schedule: Any = None,
    rngs: Mapping[str, Any] | None = None,
    data_position: Any = None,
    extra: Mapping[str, Any] | None = None,
    keep_last: int = 3,
    tokenizer: Any = None,
    full: bool = True,
    keep_full: bool = True,
    weights_dtype: Any = None,
) -> Path:
    """Write checkpoint ``step`` atomically under ``root`` and prune old ones; returns its path.

    ``data_position`` and ``extra`` must be JSON-serialisable. ``keep_last`` <= 0 keeps all; the
    newest full checkpoint is never pruned unless ``keep_full=False`` (a completed run that keeps only
    its final weights). ``full=False`` writes the weights only (``learners``, ``schedule`` and ``rngs``
    are then not saved). ``weights_dtype`` (a torch dtype) saves the weights converted to it.
    """
    import torch

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{int(step):08d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        for name, model in (models or {}).items():
            _save_model(model, tmp / "models" / name, weights_dtype)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp / "tokenizer")
            # Next to each model too, so a model folder loads on its own (`mx eval --policy RUN_DIR`).
            for name in models or {}:
                tokenizer.save_pretrained(tmp / "models" / name)
        if learners and full:
            (tmp / "learners").mkdir()
            for name, learner in learners.items():
                with _parked_as_files(learner, tmp / "learners", name):
                    torch.save(learner.state_dict(), tmp / "learners" / f"{name}.pt")
        rng_json: dict[str, Any] = {}
        torch_gens: dict[str, Any] = {}
        for name, obj in (rngs or {}).items() if full else ():
            kind, value = _rng_state(obj)
            if kind == "torch":
                torch_gens[name] = value
                value = None
            rng_json[name] = {"kind": kind, "state": value}
        if full:
            torch.save(
                {
                    "generators": torch_gens,
                    "global_cpu": torch.get_rng_state(),
                    "global_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                },
                tmp / "rng.pt",
            )
        state = {
            "step": int(step),
            "full": bool(full),
            "data_position": data_position,
            "schedule": schedule.state_dict() if schedule is not None else None,
            "rng": rng_json,
            "extra": dict(extra or {}),
        }
        if schedule is None or not full:
            state.pop("schedule")
        with open(tmp / "trainer_state.json", "w") as f:
            json.dump(state, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        if final.exists():  # re-saving a step: move the old one aside first (replace needs an empty target)
            old = root / f".old-{final.name}-{os.getpid()}"
            os.replace(final, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(root)
    if keep_last > 0:
        ckpts = list_checkpoints(root)
        fulls = [p for p in ckpts if _is_full(p)]
        keep = set(ckpts[-keep_last:]) | (set(fulls[-1:]) if keep_full else set())
        for old_ckpt in ckpts:
            if old_ckpt not in keep:
                shutil.rmtree(old_ckpt, ignore_errors=True)
    return final


def _parked_as_files(learner: Any, dest: Path, name: str) -> contextlib.AbstractContextManager[Any]:
    """A learner whose optimizer parks phases on disk saves them as files of their own (see
    ``PhaseOptimizer.parked_as_files``); any other learner saves as it is."""
    settle = getattr(learner, "settle_phase", None)
    if settle is not None:
        settle()  # a phase switch still running (Learner.prepare_phase) changes what is parked
    opt = getattr(learner, "opt", None)
    into = getattr(opt, "parked_as_files", None)
    return into(dest, name) if into is not None else contextlib.nullcontext()


def _resolve_parked(state: Any, folder: Path) -> Any:
    """Parked phases saved as files (names relative to the checkpoint's ``learners/``) as absolute paths."""
    from mx_train.learner.optim import PARKED_FILE

    parked = state.get("optimizer_phases", {}).get("parked") if isinstance(state, dict) else None
    for phase, entry in (parked or {}).items():
        if isinstance(entry, dict) and PARKED_FILE in entry:
            rel = str(entry[PARKED_FILE])
            path = (folder / rel).resolve()
            if path.parent != folder.resolve() or not path.is_file():
                raise ValueError(f"checkpoint {folder.parent}: parked optimizer state {rel!r} of phase {phase!r} is missing")
            parked[phase] = {PARKED_FILE: str(path)}
    return state


def _is_full(path: Path) -> bool:
    try:
        with open(path / "trainer_state.json") as f:
            return bool(json.load(f).get("full", True))
    except (OSError, ValueError):
        return False


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def list_checkpoints(root: str | os.PathLike[str]) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir() and (p / "trainer_state.json").exists():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def load_latest(root: str | os.PathLike[str], *, full: bool = True) -> Checkpoint | None:
    """The newest complete checkpoint under ``root`` (None if there is none): the newest *full* one
    (resumable) unless ``full=False``, which also accepts weights-only ones. Leftover temporary
    directories of interrupted writes are removed."""
    root = Path(root)
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith((".tmp-step_", ".old-step_")):
                shutil.rmtree(p, ignore_errors=True)
    ckpts = list_checkpoints(root)
    if full:
        ckpts = [p for p in ckpts if _is_full(p)]
    if not ckpts:
        return None
    path = ckpts[-1]
    with open(path / "trainer_state.json") as f:
        state = json.load(f)
    return Checkpoint(path=path, step=int(state["step"]), state=state)
