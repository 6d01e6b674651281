"""Process body of the learner benchmark: one learner (plain, or an FSDP rank) timing updates.

Run in a spawned process per case so every case starts from the same clean RSS baseline and the
1-process and 2-process cases use the same total cores (``threads`` each).
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Polls the resident set size in a thread; ``peak - start`` is the growth during the block."""

    def __enter__(self) -> PeakRSS:
        self.start = self.peak = rss_bytes()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._poll, daemon=True)
        self._t.start()
        return self

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.002)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, rss_bytes())


def run(rank: int, world: int, init_method: str, spec: str, transitions: list[dict[str, Any]],
        config: dict[str, Any], out: str, rounds: int, threads: int) -> None:
    """Warm-up update (allocates the optimizer state), then ``rounds`` timed updates; writes
    ``out/rank{rank}.json`` with tokens/s and the peak RSS growth of the timed updates."""
    import torch

    torch.set_num_threads(threads)
    from mx_agents.backends.hf import load_hf_model
    from mx_agents.transition import Transition

    trs = [Transition(**t) for t in transitions]
    model = load_hf_model(spec, "cpu", torch.float32)
    ctx = None
    if world > 1:
        from mx_train.learner.fsdp import build_sharded_learner, init_group

        ctx = init_group(rank, world, init_method, "cpu")
        learner = build_sharded_learner(model, config, ctx)
    else:
        from mx_train.learner import Learner

        learner = Learner(model, config)
    base = rss_bytes()
    learner.update(trs)
    after_warmup = rss_bytes()
    tps, growth = [], []
    for _ in range(rounds):
        with PeakRSS() as mem:
            m = learner.update(trs)
        tps.append(m["tokens_per_s"])
        growth.append((mem.peak - mem.start) / 2**20)
    from mx_train.learner.fsdp import shard_bytes

    sb = shard_bytes(learner)
    result = {
        "tokens_per_s": max(tps), "peak_rss_growth_mb": max(growth),
        "state_mb": (sb["params"] + sb["optimizer"]) / 2**20,
        "warmup_rss_growth_mb": (after_warmup - base) / 2**20, "rss_mb": rss_bytes() / 2**20,
        "loss": m["loss"],
    }
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    if ctx is not None:
        from mx_train.learner.fsdp import destroy_group

        destroy_group()
