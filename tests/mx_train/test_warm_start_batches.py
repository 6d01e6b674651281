"""The cold start's batches: every design once per step, on the same prompt, then SFT data."""

from __future__ import annotations

import random
from collections import Counter

from mx_train.sft import warm_start_batch


def _per_design(n_prompts=4):
    return {d: [f"{d}@{i}" for i in range(n_prompts)] for d in ("single", "vote", "calc")}


def test_every_step_holds_each_design_once_on_one_prompt():
    per, data = _per_design(), [f"teacher{i}" for i in range(20)]
    rng = random.Random(0)
    seen = Counter()
    for k in range(8):
        batch = warm_start_batch(per, data, 8, k, rng)
        assert len(batch) == 8
        designs = [b for b in batch if "@" in b]
        assert sorted(d.split("@")[0] for d in designs) == ["calc", "single", "vote"]
        assert len({d.split("@")[1] for d in designs}) == 1  # the same training prompt
        assert len(set(batch[3:])) == 5 and all(b.startswith("teacher") for b in batch[3:])
        seen.update(d.split("@")[0] for d in designs)
    assert set(seen.values()) == {8}  # balanced over the run, whatever the rng draws


def test_without_data_more_design_rows_fill_the_batch_and_small_batches_cut():
    per = _per_design(2)
    batch = warm_start_batch(per, [], 5, 0, random.Random(0))
    assert len(batch) == 5 and all("@" in b for b in batch)
    assert warm_start_batch(per, ["t"], 2, 0, random.Random(0)) == ["single@0", "vote@0"]
    assert sorted(warm_start_batch({}, ["t1", "t2"], 4, 0, random.Random(0))) == ["t1", "t2"]
