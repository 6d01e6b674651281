"""Training curves from a run's ``metrics.jsonl`` (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mx_train.hack_monitor import (
    ALERTS,
    EPISODES,
    FLAGGED,
    FLAGS,
    PREFIX,
    SCRIPT_VERDICT_PREFIX,
    TOOL_VERDICT_PREFIX,
)
from mx_train.metrics import (
    ACCURACY,
    ADV_DESIGNER_NONZERO,
    DESIGN_SPREAD,
    DESIGN_VALID_RATE,
    PHASE,
    REWARD_BEST_DESIGN,
    REWARD_DESIGNER,
    REWARD_EXECUTOR,
    STRUCTURE_PREFIX,
    read_metrics,
)

_PHASE_COLORS = {"designer": "#dbe9f6", "executor": "#fde6d2"}


def integrity_lines(records: list[dict[str, Any]]) -> tuple[list[str], list[str], list[int]]:
    """What the reward-hack monitor's panels draw: the flag-rate keys (``integrity/flagged`` and every
    flag that was non-zero at some step), the script/tool verdict keys non-zero at some step, and the
    steps with a monitor alert. All empty when the run logged no integrity metrics."""
    if not any(EPISODES in r for r in records):
        return [], [], []

    def seen(key: str) -> bool:
        return any(isinstance(r.get(key), int | float) and r[key] > 0 for r in records)

    flags = [FLAGGED, *(k for k in (PREFIX + f for f in FLAGS) if seen(k))]
    verdict_keys = sorted({k for r in records for k in r
                           if k.startswith((SCRIPT_VERDICT_PREFIX, TOOL_VERDICT_PREFIX))})
    verdicts = [k for k in verdict_keys if seen(k)]
    alerts = [int(r["step"]) for r in records if isinstance(r.get(ALERTS), int | float) and r[ALERTS] > 0]
    return flags, verdicts, alerts


def _series(records: list[dict[str, Any]], key: str, smooth: int) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for r in records:
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            xs.append(int(r["step"]))
            ys.append(float(v))
    if smooth > 1 and ys:
        out = []
        for i in range(len(ys)):
            window = ys[max(0, i - smooth + 1) : i + 1]
            out.append(sum(window) / len(window))
        ys = out
    return xs, ys


def plot_run(run_dir: str | os.PathLike[str], out: str | os.PathLike[str], *, smooth: int = 1) -> Path:
    """Write a PNG: rewards by role (top); the designer's own signal when the run logged it (design
    spread, share of non-zero designer advantages, share of each design structure); accuracy and
    design validity; when the run logged the reward-hack monitor's metrics, its flag rates (steps with
    an alert marked) and how script processes and tool runs ended (by sandbox verdict)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    if not records:
        raise ValueError(f"{run_dir}: metrics file has no records")
    has_design = any(DESIGN_SPREAD in r for r in records)
    flag_keys, verdict_keys, alert_steps = integrity_lines(records)
    n_panels = 2 + has_design + 2 * bool(flag_keys)
    fig, axes = plt.subplots(n_panels, 1, figsize=(8, 3 * n_panels), sharex=True)
    axes = list(axes)
    ax_r = axes.pop(0)
    ax_d = axes.pop(0) if has_design else None
    ax_a = axes.pop(0)
    ax_i, ax_v = (axes[0], axes[1]) if flag_keys else (None, None)
    plotted = 0
    for key, label, color in ((REWARD_DESIGNER, "designer (design's best execution)", "tab:blue"),
                              (REWARD_EXECUTOR, "executor (per execution)", "tab:orange"),
                              (REWARD_BEST_DESIGN, "best design of a task (mean)", "tab:cyan")):
        xs, ys = _series(records, key, smooth)
        if xs:
            ax_r.plot(xs, ys, marker="o", ms=3, label=label, color=color)
            plotted += 1
    for key, label, color in ((ACCURACY, "accuracy", "tab:green"), (DESIGN_VALID_RATE, "design validity", "tab:purple")):
        xs, ys = _series(records, key, smooth)
        if xs:
            ax_a.plot(xs, ys, marker="o", ms=3, label=label, color=color)
            plotted += 1
    if ax_d is not None:
        structures = sorted({k for r in records for k in r if k.startswith(STRUCTURE_PREFIX)})
        # A step logs only the structures it played: an absent one was played 0 times there, not
        # unknown (else its line is drawn straight across the steps it was missing from).
        filled = [{**dict.fromkeys(structures, 0.0), **r} if any(k in r for k in structures) else r for r in records]
        for key, label, style in ((DESIGN_SPREAD, "design spread (std of design rewards)", "-"),
                                  (ADV_DESIGNER_NONZERO, "designer advantages != 0", "--"),
                                  *((k, k.removeprefix(STRUCTURE_PREFIX), ":") for k in structures)):
            xs, ys = _series(filled, key, smooth)
            if xs:
                ax_d.plot(xs, ys, marker="o", ms=3, ls=style, label=label)
        ax_d.set_ylabel("designer")
    if ax_i is not None and ax_v is not None:
        for key in flag_keys:
            xs, ys = _series(records, key, smooth)
            if xs:
                ax_i.plot(xs, ys, marker="o", ms=3, ls="-" if key != flag_keys[0] else "--",
                          label=key.removeprefix(PREFIX), color="black" if key == flag_keys[0] else None)
        for i, s in enumerate(alert_steps):
            ax_i.axvline(s, color="tab:red", lw=1.5, ls=":", label="monitor alert" if i == 0 else None)
        ax_i.set_ylabel("share of episodes")
        ax_i.set_title("reward-hack monitor", fontsize=10)
        for key in verdict_keys:
            xs, ys = _series(records, key, smooth)
            if xs:
                ax_v.plot(xs, ys, marker="o", ms=3, ls="-" if key.startswith(SCRIPT_VERDICT_PREFIX) else "--",
                          label=key.removeprefix(PREFIX))
        ax_v.set_ylabel("share of runs")
        for ax in (ax_i, ax_v):  # shares: one fixed scale, so a flat line at 0 or 1 reads as such
            ax.set_ylim(-0.04, 1.04)
        ax_v.set_title("sandbox verdicts: script processes (solid), tool runs (dashed)", fontsize=10)
    if not plotted:
        raise ValueError(
            f"{run_dir}: no plottable metrics ({REWARD_DESIGNER}, {REWARD_EXECUTOR}, {ACCURACY}, {DESIGN_VALID_RATE})"
        )
    # Shade the stagewise phases so the curves can be read against which role was training.
    spans: list[tuple[int, int, str]] = []
    for r in records:
        ph = r.get(PHASE)
        if not isinstance(ph, str):
            continue
        s = int(r["step"])
        if spans and spans[-1][2] == ph and spans[-1][1] == s - 1:
            spans[-1] = (spans[-1][0], s, ph)
        else:
            spans.append((s, s, ph))
    labelled: set[str] = set()
    for a, b, ph in spans:
        if ph in _PHASE_COLORS:
            for ax in (a_ for a_ in (ax_r, ax_d, ax_a, ax_i, ax_v) if a_ is not None):
                ax.axvspan(a - 0.5, b + 0.5, color=_PHASE_COLORS[ph], zorder=0,
                           label=f"training {ph}" if ax is ax_r and ph not in labelled else None)
            labelled.add(ph)
    ax_r.set_ylabel("mean reward")
    ax_r.set_title(f"{Path(run_dir).name}: reward by role")
    ax_a.set_ylabel("rate")
    (ax_v if ax_v is not None else ax_a).set_xlabel("training step")
    for ax in (a_ for a_ in (ax_r, ax_d, ax_a, ax_i, ax_v) if a_ is not None):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
