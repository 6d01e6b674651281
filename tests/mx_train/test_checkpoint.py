"""Atomic checkpoints, pruning, exact restore, and resume after SIGKILL."""

from __future__ import annotations

import copy
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mx_train.checkpoint import list_checkpoints, load_latest, save_checkpoint
from mx_train.learner import Learner
from mx_train.schedule import CoEvolutionSchedule
from tests.mx_train.test_learner import batch

WORKER = Path(__file__).with_name("resume_worker.py")
REPO = Path(__file__).resolve().parents[2]


def test_save_restore_round_trip(tmp_path, tiny):
    from mx_agents.testing import tiny_llama

    model, tok = tiny
    learner = Learner(model, {"lr": 1e-2})
    learner.update(batch())
    sched = CoEvolutionSchedule("stagewise", phase_steps=5, first="designer")
    py, npg, tg = random.Random(1), np.random.default_rng(2), torch.Generator().manual_seed(3)
    py.random(), npg.random(), torch.rand(1, generator=tg)
    path = save_checkpoint(tmp_path, 7, models={"policy": model}, learners={"policy": learner}, schedule=sched,
                           rngs={"py": py, "np": npg, "t": tg}, data_position={"epoch": 1, "index": 42},
                           extra={"note": "x"}, tokenizer=tok)
    assert path.name == "step_00000007" and (path / "tokenizer").is_dir()
    expect = (py.random(), npg.random(), torch.rand(1, generator=tg).item())

    model2, _ = tiny_llama(seed=1)
    learner2 = Learner(model2, {"lr": 1e-2})
    sched2 = CoEvolutionSchedule()
    py2, np2, t2 = random.Random(0), np.random.default_rng(0), torch.Generator()
    ckpt = load_latest(tmp_path)
    assert ckpt.step == 7 and ckpt.data_position == {"epoch": 1, "index": 42} and ckpt.extra == {"note": "x"}
    ckpt.restore(models={"policy": model2}, learners={"policy": learner2}, schedule=sched2,
                 rngs={"py": py2, "np": np2, "t": t2})
    for (n, a), b in zip(model.state_dict().items(), model2.state_dict().values(), strict=True):
        assert torch.equal(a, b), n
    assert learner2.version == 1 and sched2.state_dict() == sched.state_dict()
    assert (py2.random(), np2.random(), torch.rand(1, generator=t2).item()) == expect
    # the restored optimizer continues identically
    data = batch(seed=5)
    learner.update(data)
    learner2.update(data)
    for a, b in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(a, b)


def test_keep_last_and_interrupted_writes_are_ignored(tmp_path, tiny):
    model, _ = tiny
    for step in range(1, 5):
        save_checkpoint(tmp_path, step, models={"m": model}, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000003", "step_00000004"]
    # a write killed before its os.replace leaves only a hidden temp dir: invisible, then cleaned up
    partial = tmp_path / ".tmp-step_00000005-999"
    (partial / "models").mkdir(parents=True)
    (tmp_path / "step_00000009").mkdir()  # no trainer_state.json: not a checkpoint
    assert load_latest(tmp_path).step == 4
    assert not partial.exists()
    assert load_latest(tmp_path / "nothing") is None


def test_lora_adapter_checkpoint(tmp_path, tiny):
    pytest.importorskip("peft")
    from mx_agents.testing import tiny_llama

    model, _ = tiny
    learner = Learner(model, {"lr": 5e-2, "lora": {"r": 2}})
    learner.update(batch())
    learner.update(batch())
    save_checkpoint(tmp_path, 1, models={"policy": learner.model}, learners={"policy": learner})
    assert (tmp_path / "step_00000001" / "models" / "policy" / "adapter_model.safetensors").exists()
    fresh = Learner(tiny_llama(seed=0)[0], {"lr": 5e-2, "lora": {"r": 2}})
    untrained = np.concatenate(fresh.logprobs(batch()))
    load_latest(tmp_path).restore(models={"policy": fresh.model}, learners={"policy": fresh})
    a, b = np.concatenate(learner.logprobs(batch())), np.concatenate(fresh.logprobs(batch()))
    # fp32 on CPU: the two models may reduce in a different order (one CI run saw 7e-6 apart), while
    # adapters that were not restored are far off.
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert np.abs(a - untrained).max() > 1e-2


def test_restore_errors(tmp_path, tiny):
    model, _ = tiny
    save_checkpoint(tmp_path, 1, models={"m": model}, rngs={"py": random.Random(0)})
    ckpt = load_latest(tmp_path)
    with pytest.raises(KeyError, match="no RNG state 'np'"):
        ckpt.restore(rngs={"np": np.random.default_rng()})
    with pytest.raises(TypeError, match="saved as python"):
        ckpt.restore(rngs={"py": np.random.default_rng()})
    with pytest.raises(TypeError, match="cannot checkpoint RNG"):
        save_checkpoint(tmp_path, 2, rngs={"bad": object()})


def _run(args, check=True):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, str(WORKER), *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"worker failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc


@pytest.mark.slow
def test_sigkill_mid_step_resumes_exactly(tmp_path):
    from safetensors.torch import load_file

    from tests.mx_train.resume_worker import run

    total = 5
    run(str(tmp_path / "a"), total, -1, str(tmp_path / "a.safetensors"))  # uninterrupted, in-process
    killed = _run([tmp_path / "b", total, 3, tmp_path / "unused"], check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert "completed step 2" in killed.stdout and "completed step 3" not in killed.stdout
    assert load_latest(tmp_path / "b").step == 3  # every completed step was kept
    resumed = _run([tmp_path / "b", total, -1, tmp_path / "b.safetensors"])
    assert "completed step 3" in resumed.stdout and "completed step 0" not in resumed.stdout
    assert load_latest(tmp_path / "b").step == total
    a, b = load_file(tmp_path / "a.safetensors"), load_file(tmp_path / "b.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_a_phase_parked_on_disk_is_saved_as_its_file_never_read_back(tmp_path, tiny, monkeypatch):
    """A full checkpoint of a CPU learner whose inactive phase's AdamW moments are parked on disk
    links (or copies) the park file into the checkpoint instead of loading it: loading it put both
    phases' moments in memory at once at every full save (the demo's peak RSS, issue 20). Restoring
    adopts the file as the new learner's park, and the next updates equal the uninterrupted run's."""
    from mx_train.learner.optim import PARKED_FILE, _Spilled
    from tests.mx_train.test_learner import _role_batch, _weights

    model, _ = tiny
    a = Learner(copy.deepcopy(model), {"lr": 1e-3, "park_optimizer": "disk"})
    a.update(_role_batch("executor", 4, 0), active_roles={"executor"})
    a.update(_role_batch("designer", 4, 1), active_roles={"designer"})
    assert isinstance(a.opt.parked["executor"], _Spilled)

    def no_read_back(self, params):
        raise AssertionError("a checkpoint read the parked phase back into memory")

    with monkeypatch.context() as m:
        m.setattr(_Spilled, "load", no_read_back)
        path = save_checkpoint(tmp_path, 2, models={"policy": a.model}, learners={"policy": a})
    saved = torch.load(path / "learners" / "policy.pt", weights_only=True)
    assert saved["optimizer_phases"]["parked"]["executor"] == {PARKED_FILE: "policy.parked-executor.pt"}
    assert (path / "learners" / "policy.parked-executor.pt").stat().st_size > 0

    b = Learner(copy.deepcopy(model), {"lr": 1e-3, "park_optimizer": "disk"})
    load_latest(tmp_path).restore(models={"policy": b.model}, learners={"policy": b})
    parked = b.opt.parked["executor"]
    assert isinstance(parked, _Spilled) and not parked.path.startswith(str(tmp_path))  # its own copy
    for learner in (a, b):  # both switch back to the executor: its moments come from the park
        learner.update(_role_batch("executor", 4, 2), active_roles={"executor"})
    wa, wb = _weights(a.model), _weights(b.model)
    assert all(torch.equal(wa[n], wb[n]) for n in wa)
    assert (path / "learners" / "policy.parked-executor.pt").exists()  # the checkpoint keeps its copy

    c = Learner(copy.deepcopy(model), {"lr": 1e-3, "park_optimizer": "memory"})  # a GPU-style learner
    load_latest(tmp_path).restore(models={"policy": c.model}, learners={"policy": c})
    assert not isinstance(c.opt.parked["executor"], _Spilled)
    (path / "learners" / "policy.parked-executor.pt").unlink()
    with pytest.raises(ValueError, match="parked optimizer state"):
        load_latest(tmp_path).restore(models={"policy": b.model}, learners={"policy": b})
