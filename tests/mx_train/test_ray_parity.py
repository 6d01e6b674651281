"""Same behaviour local and distributed: the smoke config (tiny-random model, continuous schedule) run
in one process and with 2 Ray rollout workers gives the same transitions step for step, the same
metrics (Ray adds only its own: weight checks, the workers' log-prob gaps), and the workers provably
hold the learner's weights after every push.

Exact equality holds because nothing is seeded per worker: the rollout policy's seed comes from
(run seed, step), every sampling request's seed from (run, task uid, design, execution, turn)
(``ActorTurn.seed_key``), env resets from each task's position in the step, and the HF engine samples
a seeded request with a generator of its own (the same tokens whatever batch it lands in).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mx_train.config import TrainConfig

ray = pytest.importorskip("ray", reason="the `dist` extra (ray) is not installed")

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "smoke_cpu.yaml"
# Metrics only a Ray run has: the weight checks of each push, the workers' engines vs the learner
# (a local HF engine is the learner's own model: nothing to compare), worker restarts, the RSS peak
# outside the phases (the pushes to the workers happen there).
RAY_ONLY = ("distributed/", "rollout/logprob_diff_", "rollout/weight_sync_s", "memory/peak_rss_gb/other")
# Timings, memory and the generation engines' batching counters differ by construction.
# off_policy/mismatch_*: the learner vs the sampling log-probs, which agree to float32 roundoff in
# both runs (checked below), so their gap is roundoff of roundoff.
NOT_COMPARED = ("time/", "memory/", "tokens_per_s", "time_s", "rollout/batch_width", "rollout/prefix_hit_rate",
                "rollout/decode_steps", "rollout/single_row_steps", "rollout/prompt_tokens", "off_policy/mismatch",
                "rollout/engine_", "rollout/draft_")


def _run(tmp: Path, backend: str) -> tuple[list[dict], list[list[dict]]]:
    from mx_train.trainer import Trainer

    overrides = [f"out={tmp / backend}", "save_every=100", "full_save_every=0", "final_checkpoint=weights"]
    if backend == "ray":
        overrides += ["distributed.backend=ray", "distributed.num_rollout_workers=2", "distributed.worker_cpus=0.5"]
    cfg = TrainConfig.from_yaml(SMOKE, overrides=overrides)
    assert cfg.rollout.schedule == "continuous"  # the default: what the workers must honour too
    trainer = Trainer(cfg, progress=False)
    history = trainer.run()
    assert trainer._workers is None  # a Ray run's workers are closed by run()
    shards = [[json.loads(x) for x in p.read_text().splitlines()]
              for p in sorted((tmp / backend / "transitions").glob("step_*.jsonl"))]
    return history, shards


def _compared(m: dict) -> dict:
    return {k: v for k, v in m.items()
            if not k.startswith(RAY_ONLY) and not any(x in k for x in NOT_COMPARED) and isinstance(v, int | float)}


@pytest.mark.slow
def test_local_and_ray_runs_match_step_for_step(tmp_path, local_ray):
    local, local_tr = _run(tmp_path, "local")
    dist, dist_tr = _run(tmp_path, "ray")
    assert len(local) == len(dist) == 2 and len(local_tr) == len(dist_tr) == 2

    # The Ray run on its own: B * M * N episodes and B * M designer transitions gathered from both
    # workers each step, and step 1 sampled with the learner's weights after step 0 (the version
    # pushed through Ray).
    for m in dist:
        assert m["episodes"] == 8 and m["transitions/designer"] == 4
    assert len(dist_tr[1]) >= 4
    assert {row["policy_version"] for row in dist_tr[1]} == {int(dist[1]["policy_version"])}

    # The same metrics: every local key under Ray too, and Ray adds only its own (the batch-width
    # histogram's buckets are the widths that occurred: two engines see other widths than one).
    for lm, dm in zip(local, dist, strict=True):
        lk, dk = ({k for k in m if not k.startswith("rollout/batch_width_hist_")} for m in (lm, dm))
        assert lk <= dk, sorted(lk - dk)
        assert all(k.startswith(RAY_ONLY) for k in dk - lk), sorted(dk - lk)
        assert any(k.startswith("rollout/batch_width_hist_") for k in dm)
        for key in ("design/distinct", "design/valid", "design/tasks_with_choice_signal"):
            assert key in dm
        assert any(k.startswith("design/structure/") for k in dm)

    # The same transitions, step for step, in the same order: tokens, texts, rewards, advantages, group
    # ids exactly; sampling log-probs to float32 roundoff (a row's logits move in the last bits with
    # the batch it is computed in: 8 episodes in one engine vs 4 in each of two).
    for step, (a, b) in enumerate(zip(local_tr, dist_tr, strict=True)):
        assert len(a) == len(b) > 0, step
        for x, y in zip(a, b, strict=True):
            x.pop("metadata", None), y.pop("metadata", None)  # engine counters (batch ids, versions seen)
            lx, ly = x.pop("logprobs"), y.pop("logprobs")
            assert x == y, (step, x["episode_id"], {k for k in x if x[k] != y.get(k)})
            assert (lx is None) == (ly is None) and len(lx or []) == len(ly or [])
            assert lx == pytest.approx(ly, abs=1e-4), (step, x["episode_id"])

    # ... hence the same updates: every reward, design, advantage and loss metric agrees.
    for step, (lm, dm) in enumerate(zip(local, dist, strict=True)):
        a, b = _compared(lm), _compared(dm)
        assert a.keys() == b.keys()
        assert all(m[k] < 1e-4 for m in (lm, dm) for k in m if "off_policy/mismatch" in k), step
        diff = {k: (a[k], b[k]) for k in a if a[k] != pytest.approx(b[k], rel=1e-4, abs=1e-6)}
        assert not diff, (step, diff)

    # Weights checked after each push (2 workers x 1 engine role): received bit for bit, held by the
    # HF engine, and the workers sampled with exactly the learner's weights (fp32 on both sides).
    for dm in dist:
        assert dm["distributed/weights_verified"] == 2.0 and dm["distributed/weights_held_checked"] == 2.0
        assert dm["rollout/logprob_diff_max"] < 1e-4
        assert dm["rollout/logprob_diff_synced_max"] < 1e-4


def test_weight_checksum_sees_one_changed_bit():
    import torch

    from mx_train.distributed import engine_holds, weights_crc

    state = {"a": torch.randn(4, 3, generator=torch.Generator().manual_seed(0)), "b": torch.zeros(5)}
    same = {k: v.clone() for k, v in state.items()}
    assert weights_crc(state) == weights_crc(same)
    flipped = {k: v.clone() for k, v in state.items()}
    flipped["a"].view(torch.int32)[1, 2] ^= 1  # the lowest mantissa bit of one weight
    assert weights_crc(flipped) != weights_crc(state)
    assert weights_crc({"a": state["a"], "c": state["b"]}) != weights_crc(state)  # names count

    class _Engine:
        def __init__(self, sd):
            self.model = torch.nn.Module()
            for k, v in sd.items():
                self.model.register_buffer(k, v.clone())

    assert engine_holds(_Engine(state), state) is True
    assert engine_holds(_Engine(flipped), state) is False
    assert engine_holds(object(), state) is None
