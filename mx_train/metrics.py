"""Per-step training metrics: what a step's episodes add up to (:func:`summarize_records`,
:func:`design_labels_and_validity`) and where metrics go: JSONL (always), TensorBoard (optional),
Weights & Biases (optional).

Each ``log(step, metrics)`` appends one JSON line ``{"step": ..., "time": ..., **metrics}`` to
``RUN_DIR/metrics.jsonl``. Numeric values also go to TensorBoard (``RUN_DIR/tb``) and, when a W&B
project is configured, to W&B; strings (e.g. ``phase``) only to JSONL (and as TensorBoard text on
change). Metric names used by the trainer and read by ``mx plot`` are below.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"
# Names shared by the trainer (writer) and `mx plot` (reader).
REWARD_DESIGNER = "reward/designer"
REWARD_EXECUTOR = "reward/executor"
ACCURACY = "accuracy"
DESIGN_VALID_RATE = "design_valid_rate"
PHASE = "phase"
# Designer-side metrics (mx_train.credit.role_metrics): what the designer's advantages come from.
REWARD_BEST_DESIGN = "reward/best_design"
DESIGN_SPREAD = "design/spread"
ADV_DESIGNER_NONZERO = "adv/designer_nonzero"
STRUCTURE_PREFIX = "design/structure/"


class MetricsLogger:
    """Writes metrics for one run.

    Args:
        run_dir: directory of the run (created).
        tensorboard: also write TensorBoard event files (``torch.utils.tensorboard``, imported lazily).
        wandb: ``None``, or ``wandb.init`` kwargs (e.g. ``{"project": "mx"}``); imported lazily.
        resume_step: when resuming from a checkpoint taken after ``resume_step`` steps, records with
            ``step >= resume_step`` (written after that checkpoint, by the killed run) are dropped.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        *,
        tensorboard: bool = True,
        wandb: Mapping[str, Any] | None = None,
        resume_step: int | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / METRICS_FILE
        if resume_step is not None and self.path.exists():
            keep = [r for r in read_metrics(self.path) if r.get("step", -1) < resume_step]
            tmp = self.path.with_suffix(".jsonl.tmp")
            with open(tmp, "w") as f:
                for r in keep:
                    f.write(json.dumps(r) + "\n")
            os.replace(tmp, self.path)
        self._file = open(self.path, "a", buffering=1)  # noqa: SIM115 (held open for the run; closed in close())
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.run_dir / "tb"), purge_step=resume_step)
        self._wandb = None
        if wandb:
            try:
                import wandb as wandb_mod
            except ImportError as exc:
                raise ImportError("W&B logging is configured but wandb is not installed: pip install wandb") from exc
            self._wandb = wandb_mod.init(dir=str(self.run_dir), resume="allow", **dict(wandb))
        self._last_text: dict[str, str] = {}

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        record: dict[str, Any] = {"step": int(step), "time": time.time()}
        for k, v in metrics.items():
            record[k] = _plain(v)
        self._file.write(json.dumps(record, allow_nan=True) + "\n")
        numeric = {k: v for k, v in record.items() if k not in ("step", "time") and _is_number(v)}
        if self._tb is not None:
            for k, v in numeric.items():
                self._tb.add_scalar(k, v, step)
            for k, v in record.items():
                if isinstance(v, str) and self._last_text.get(k) != v:
                    self._tb.add_text(k, v, step)
                    self._last_text[k] = v
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in record.items() if k not in ("step", "time")}, step=step)

    def flush(self) -> None:
        self._file.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        self.flush()
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _plain(v: Any) -> Any:
    if hasattr(v, "item") and callable(v.item) and getattr(v, "ndim", 0) == 0:
        return v.item()
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return str(v)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Records of a metrics JSONL (a run dir or the file), one per step: when a step was logged
    twice (a resumed run), the last record wins. A torn last line (killed writer) is skipped."""
    p = Path(path)
    if p.is_dir():
        p = p / METRICS_FILE
    if not p.exists():
        raise FileNotFoundError(f"no metrics file at {p}")
    by_step: dict[int, dict[str, Any]] = {}
    with open(p) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and "step" in rec:
                by_step[int(rec["step"])] = rec
    return [by_step[s] for s in sorted(by_step)]


def summarize_records(records: Sequence[Any]) -> dict[str, Any]:
    """Episode-level rollout metrics: accuracy, design validity, termination reasons, LLM calls, and the
    reward-hack monitor's integrity/ rates (:func:`mx_train.hack_monitor.integrity_metrics`)."""
    n = max(len(records), 1)
    reasons: dict[str, int] = {}
    for r in records:
        reasons[r.termination_reason] = reasons.get(r.termination_reason, 0) + 1
    out: dict[str, Any] = {
        "episodes": float(len(records)),
        ACCURACY: sum(bool(r.correct) for r in records) / n,
        DESIGN_VALID_RATE: sum(bool(r.design_valid) for r in records) / n,
        "llm_calls_per_episode": sum(r.llm_calls for r in records) / n,
    }
    for reason, count in sorted(reasons.items()):
        out[f"termination/{reason or 'unknown'}"] = count / n
    from mx_train.hack_monitor import integrity_metrics

    out.update(integrity_metrics(records))
    return out


def design_labels_and_validity(result: Any) -> tuple[list[list[str]], list[list[bool]]]:
    """Per task and design of a rollout result: the structure family (with ``+tools``) and whether its
    first execution found the design valid."""
    from mx_train.eval.design_structure import INVALID, design_family

    labels, valid = [], []
    for t, per_task in enumerate(result.designs):
        lab_row, val_row = [], []
        for m, action in enumerate(per_task):
            runs = result.executions(t, m)
            ok = bool(runs and runs[0].design_valid)
            script = getattr(action, "script", None)
            lab_row.append(design_family(script) if ok else INVALID)
            val_row.append(ok)
        labels.append(lab_row)
        valid.append(val_row)
    return labels, valid
