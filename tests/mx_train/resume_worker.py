"""A small deterministic training loop for the kill-and-resume test (run as a subprocess).

Usage: python resume_worker.py CKPT_DIR TOTAL_STEPS DIE_AT OUT_FILE
Resumes from CKPT_DIR's latest checkpoint if any; at step DIE_AT (>= 0) it computes gradients and
then SIGKILLs itself mid-step; at the end it writes the model weights to OUT_FILE (safetensors).
"""

from __future__ import annotations

import os
import random
import signal
import sys


def run(ckpt_dir: str, total: int, die_at: int, out_file: str) -> None:
    """The loop, in this process or a subprocess (torch runs single-threaded meanwhile)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bitwise-reproducible CPU kernels across runs
    try:
        _loop(ckpt_dir, total, die_at, out_file)
    finally:
        torch.set_num_threads(threads)


def _loop(ckpt_dir: str, total: int, die_at: int, out_file: str) -> None:
    import numpy as np
    from safetensors.torch import save_file

    from mx_agents.testing import tiny_llama
    from mx_agents.transition import Transition
    from mx_train.checkpoint import load_latest, save_checkpoint
    from mx_train.learner import Learner
    from mx_train.schedule import CoEvolutionSchedule

    model, _ = tiny_llama(seed=0)
    learner = Learner(model, {"lr": 1e-2, "micro_batch_tokens": 32, "warmup_steps": 2})
    schedule = CoEvolutionSchedule("stagewise", phase_steps=2)
    data_rng = np.random.default_rng(123)  # the loop's own RNGs: their state must survive a resume
    role_rng = random.Random(7)
    prompts = [np.random.default_rng(i).integers(5, 300, size=3 + i % 4).tolist() for i in range(10)]
    start, pos = 0, 0
    ckpt = load_latest(ckpt_dir)
    if ckpt is not None:
        ckpt.restore(models={"policy": learner.model}, learners={"policy": learner}, schedule=schedule,
                     rngs={"data": data_rng, "roles": role_rng})
        start, pos = ckpt.step, ckpt.data_position
    for step in range(start, total):
        batch = []
        for _ in range(4):
            batch.append(Transition(
                episode_id="e", task_uid="t", task_id="t", design_id=0, execution_id=0,
                role=role_rng.choice(["designer", "executor"]), agent="a", turn=0,
                prompt_ids=prompts[pos % len(prompts)],
                response_ids=data_rng.integers(5, 300, size=int(data_rng.integers(1, 5))).tolist(),
                logprobs=None, advantage=float(data_rng.normal()),
            ))
            pos += 1
        if step == die_at:
            learner.compute_gradients(batch)
            os.kill(os.getpid(), signal.SIGKILL)
        learner.update(batch, active_roles=schedule.active_roles(step))
        save_checkpoint(ckpt_dir, step + 1, models={"policy": learner.model}, learners={"policy": learner},
                        schedule=schedule, rngs={"data": data_rng, "roles": role_rng}, data_position=pos,
                        keep_last=2)
        print(f"completed step {step}", flush=True)
    save_file({k: v.contiguous() for k, v in learner.model.state_dict().items()}, out_file)


if __name__ == "__main__":
    run(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
