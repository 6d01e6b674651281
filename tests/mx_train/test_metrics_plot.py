"""Metrics JSONL/TensorBoard logging and `mx plot`."""

from __future__ import annotations

import json

import pytest

from mx_train.metrics import MetricsLogger, read_metrics


def _log_run(run_dir, steps=6, tensorboard=False):
    with MetricsLogger(run_dir, tensorboard=tensorboard) as log:
        for s in range(steps):
            log.log(s, {"reward/designer": 0.1 * s, "reward/executor": 0.2 + 0.05 * s, "accuracy": 0.3,
                        "design_valid_rate": 0.9, "phase": "executor" if s < 3 else "designer", "loss": 1.0 / (s + 1)})


def test_jsonl_records_and_resume_truncation(tmp_path):
    _log_run(tmp_path)
    recs = read_metrics(tmp_path)
    assert [r["step"] for r in recs] == list(range(6)) and recs[2]["phase"] == "executor"
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 9, "reward/desi')  # torn last line of a killed writer
    assert [r["step"] for r in read_metrics(tmp_path)] == list(range(6))
    log = MetricsLogger(tmp_path, tensorboard=False, resume_step=4)  # checkpoint after 4 steps
    log.log(4, {"reward/designer": -1.0})
    log.close()
    recs = read_metrics(tmp_path)
    assert [r["step"] for r in recs] == [0, 1, 2, 3, 4] and recs[4]["reward/designer"] == -1.0


def test_tensorboard_events_hold_the_logged_scalars(tmp_path):
    """Read the event file back: every numeric metric is a scalar series at steps 0..n-1 with the
    logged values (an empty SummaryWriter also writes an event file, so existence proves nothing)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # a core dependency

    _log_run(tmp_path, steps=3, tensorboard=True)
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"reward/designer", "reward/executor", "accuracy", "design_valid_rate", "loss"} <= tags
    designer = acc.Scalars("reward/designer")
    assert [e.step for e in designer] == [0, 1, 2]
    assert [e.value for e in designer] == pytest.approx([0.0, 0.1, 0.2])
    assert [e.value for e in acc.Scalars("loss")] == pytest.approx([1.0, 0.5, 1 / 3])
    assert [e.value for e in acc.Scalars("reward/executor")] == pytest.approx([0.2, 0.25, 0.3])


def test_mx_plot_writes_png(tmp_path):
    from mx_train.cli import main

    _log_run(tmp_path)
    out = tmp_path / "curves.png"
    assert main(["plot", str(tmp_path), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
    assert main(["plot", str(tmp_path / "missing")]) == 1
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "metrics.jsonl").write_text(json.dumps({"step": 0, "loss": 1.0}) + "\n")
    assert main(["plot", str(tmp_path / "empty")]) == 1  # nothing plottable: a clear error, no crash


def test_structure_share_is_zero_in_steps_that_did_not_play_it(tmp_path, monkeypatch):
    import matplotlib.axes

    from mx_train.plot import plot_run

    with MetricsLogger(tmp_path) as log:
        for s, shares in enumerate(({"vote": 0.5, "single": 0.5}, {"single": 1.0}, {"vote": 1.0})):
            log.log(s, {"reward/designer": 0.5, "accuracy": 0.5, "phase": "designer", "design/spread": 0.1,
                        **{f"design/structure/{k}": v for k, v in shares.items()}})
    lines = {}
    real_plot = matplotlib.axes.Axes.plot

    def spy(self, xs, ys, *args, **kwargs):
        lines[kwargs.get("label")] = list(ys)
        return real_plot(self, xs, ys, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", spy)
    plot_run(tmp_path, tmp_path / "c.png")
    assert lines["vote"] == [0.5, 0.0, 1.0] and lines["single"] == [0.5, 1.0, 0.0]
