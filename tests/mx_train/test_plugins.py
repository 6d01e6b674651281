"""Plugins: a loss written outside the package (examples/gspo_plugin.py) gets the mask and settings,
computes GSPO's sequence-level objective, and runs from `mx train --plugin`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mx_train.learner.losses import POLICY_LOSSES, BatchCounts, LossSettings, policy_objective
from mx_train.plugins import load_plugin

REPO = Path(__file__).resolve().parents[2]
GSPO = REPO / "examples" / "gspo_plugin.py"


def _batch():
    g = torch.Generator().manual_seed(0)
    logprobs = (-torch.rand(3, 5, generator=g) - 0.1).requires_grad_(True)
    old = (logprobs.detach() + 0.05 * torch.randn(3, 5, generator=g))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], dtype=torch.float32)
    adv = torch.tensor([1.0, -0.5, 2.0])
    return logprobs, old, mask, adv


def test_gspo_plugin_gets_mask_and_settings_and_matches_the_sequence_objective() -> None:
    load_plugin(str(GSPO))
    assert "gspo" in POLICY_LOSSES
    logprobs, old, mask, adv = _batch()
    settings = LossSettings(policy_loss="gspo", loss_agg="seq_mean_token_mean", clip_low=0.5, clip_high=0.5)
    counts = BatchCounts(tokens=int(mask.sum()), sequences=3, norm_length=5)
    loss, stats = policy_objective(logprobs, old, adv, mask, counts, settings)
    loss.backward()
    ours = logprobs.grad.clone()

    # The GSPO objective written directly per sequence (wide clip range: the unclipped branch).
    lp = logprobs.detach().clone().requires_grad_(True)
    s = torch.exp(((lp - old) * mask).sum(-1) / mask.sum(-1))
    reference = -(s * adv).mean()
    reference.backward()
    assert float(loss.detach()) == pytest.approx(float(reference.detach()), rel=1e-5)
    assert torch.allclose(ours, lp.grad, atol=1e-6)
    assert torch.all(ours[mask == 0] == 0)  # padding never gets gradient
    assert stats["clip_frac_sum"] == 0.0

    # Tight clipping: a sequence whose ratio leaves [1 - eps, 1 + eps] in the advantage's direction
    # gets no gradient at all (sequence-level, not per token).
    tight = LossSettings(policy_loss="gspo", loss_agg="seq_mean_token_mean", clip_low=1e-4, clip_high=1e-4)
    lp2 = logprobs.detach().clone().requires_grad_(True)
    loss2, stats2 = policy_objective(lp2, old, adv, mask, counts, tight)
    loss2.backward()
    seq_ratio = torch.exp(((logprobs.detach() - old) * mask).sum(-1) / mask.sum(-1))
    clipped = ((seq_ratio > 1 + 1e-4) & (adv > 0)) | ((seq_ratio < 1 - 1e-4) & (adv < 0))
    assert clipped.any() and stats2["clip_frac_sum"] == float(mask[clipped].sum())
    assert torch.all(lp2.grad[clipped] == 0) and torch.any(lp2.grad[~clipped] != 0)


@pytest.mark.slow
def test_mx_train_runs_a_plugin_loss_from_outside_the_package(tmp_path, capsys) -> None:
    from mx_train.cli import main

    # The tiny random model's designs all fail alike, so group-normalised advantages would be 0 and no
    # loss would run: a second plugin registers an estimator that keeps a constant baseline instead.
    baseline = tmp_path / "const_baseline.py"
    baseline.write_text(
        "import numpy as np\n"
        "from mx_train.advantages import ADVANTAGE_ESTIMATORS\n\n"
        "@ADVANTAGE_ESTIMATORS.register('const_baseline')\n"
        "def const_baseline(rewards, **_):\n"
        "    return np.asarray(rewards, dtype=float) - 0.5\n"
    )
    out = tmp_path / "run"
    rc = main(["train", "--config", str(REPO / "configs" / "smoke_cpu.yaml"), "--plugin", str(GSPO),
               "--plugin", str(baseline), "--set", "algorithm.estimator=const_baseline",
               "--set", "learner.policy_loss=gspo", "--set", "learner.loss_agg=seq_mean_token_mean",
               "--max-steps", "1", "--out", str(out), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    cfg = json.loads((out / "train_config.json").read_text())
    assert cfg["learner"]["policy_loss"] == "gspo" and cfg["plugins"] == [str(GSPO), str(baseline)]
    (record,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert record["step"] == 0
    loss = record.get("policy/loss", record.get("designer/loss"))
    assert loss is not None and loss == loss  # a number, not NaN
