"""The memory plan: sizes from HF config shapes, and the paper configs' fit verdicts."""

from __future__ import annotations

import json

import pytest

from mx_train.config import TrainConfig
from mx_train.memory_plan import KNOWN_CONFIGS, ModelShape, model_shape, plan_memory


def test_param_count_from_shapes_equals_the_real_model(tmp_path):
    from mx_agents.testing import tiny_llama

    model, tok = tiny_llama(seed=0)
    model.save_pretrained(tmp_path)
    shape = model_shape(str(tmp_path))
    assert shape.source == "config"
    assert shape.params() == sum(p.numel() for p in model.parameters())


def test_known_table_sizes():
    assert ModelShape.from_config("8b", KNOWN_CONFIGS["Qwen/Qwen3-8B"], "table").params() / 1e9 == pytest.approx(8.19, abs=0.01)
    assert ModelShape.from_config("4b", KNOWN_CONFIGS["Qwen/Qwen3-4B"], "table").params() / 1e9 == pytest.approx(4.02, abs=0.01)
    with pytest.raises(ValueError, match="known table"):
        model_shape("no-such/model-xyz")


def _plan(path, **kw):
    return plan_memory(TrainConfig.from_yaml(path), **kw)


def test_paper_8b_fits_8_h200_not_one_80gb_gpu():
    fits = _plan("configs/paper_qwen3_8b_math.yaml", gpus=8, gpu_mem_gb=141)
    assert fits.fits and fits.learner_procs == 8 and "FSDP2" in fits.mode
    one = _plan("configs/paper_qwen3_8b_math.yaml", gpus=1, gpu_mem_gb=80)
    assert not one.fits and "AdamW" in one.why and "--learner-procs" in one.why
    # sharding: the learner's fp32 state per GPU is an eighth
    assert fits.per_gpu_gb["AdamW state (fp32)"] == pytest.approx(one.per_gpu_gb["AdamW state (fp32)"] / 8, rel=1e-3)


def test_4b_on_one_h200_and_lora_8b_on_one_80gb_gpu():
    assert _plan("configs/paper_qwen3_4b_code.yaml", gpus=1, gpu_mem_gb=141).fits
    lora = _plan("configs/paper_qwen3_8b_lora_1gpu.yaml", gpus=1, gpu_mem_gb=80)
    assert lora.fits and lora.mode.startswith("LoRA")


def test_dry_run_cli_json(capsys):
    from mx_train.cli import main

    rc = main(["train", "--config", "configs/paper_qwen3_8b_math.yaml", "--dry-run", "--gpus", "8",
               "--gpu-mem-gb", "141", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["fits"] is True and out["total_gb"] <= 141
    rc = main(["train", "--config", "configs/paper_qwen3_8b_math.yaml", "--dry-run", "--gpus", "1",
               "--gpu-mem-gb", "80"])
    text = capsys.readouterr().out
    assert rc == 3 and "DOES NOT FIT" in text


# ---------------------------------------------------------------------------- host memory (CPU runs)
def test_cpu_config_gets_a_host_plan_with_what_stays_resident():
    demo = _plan("configs/demo_cpu.yaml", host_mem_gb=24)
    assert demo.device == "cpu" and demo.gpus == 0 and demo.fits
    p = demo.params_b * 1e9
    terms = demo.per_gpu_gb
    # One fp32 model shared by the engine and the learner, the active phase's AdamW moments (8P), the
    # parked phase on disk (park_optimizer auto on the CPU), the update's fp32 gradients (4P).
    assert terms["model weights (engine = learner)"] == pytest.approx(4 * p / 1e9, rel=1e-3)
    assert terms["AdamW moments, active phase"] == pytest.approx(8 * p / 1e9, rel=1e-3)
    assert not any("parked" in k for k in terms) and any("parked on disk" in n for n in demo.notes)
    assert terms["gradients (fp32) [update]"] == pytest.approx(4 * p / 1e9, rel=1e-3)
    assert "logits chunk (1024 tok) [update]" in terms
    in_memory = plan_memory(TrainConfig.from_yaml("configs/demo_cpu.yaml", overrides=["learner.park_optimizer=memory"]),
                            host_mem_gb=24)
    assert in_memory.total_gb - demo.total_gb == pytest.approx(8 * p / 1e9, rel=1e-2)
    nockpt = plan_memory(TrainConfig.from_yaml("configs/demo_cpu.yaml",
                                               overrides=["learner.gradient_checkpointing=false"]), host_mem_gb=24)
    assert nockpt.total_gb > demo.total_gb
    # Async rollouts: the engine samples with its own copy of the weights, resident through the update
    # (not before RL starts: the warm start's figure is the synchronous one).
    asy = plan_memory(TrainConfig.from_yaml("configs/demo_cpu.yaml", overrides=["rollout.async.max_staleness=1"]),
                      host_mem_gb=24)
    assert asy.per_gpu_gb["engine weights copy (async, max_staleness 1)"] == pytest.approx(4 * p / 1e9, rel=1e-3)
    assert asy.total_gb - demo.total_gb == pytest.approx(4 * p / 1e9, rel=1e-2)
    assert "warm start 3.33 GB" in asy.why and "warm start 3.33 GB" in demo.why
    # the demo's speculative decoding keeps an n-gram history of up to 200k tokens (not during the warm start)
    assert terms["draft history (speculative, 200000 tok)"] == pytest.approx(165 * 200_000 / 1e9, rel=1e-3)
    nodraft = plan_memory(TrainConfig.from_yaml("configs/demo_cpu.yaml", overrides=[
        "policy.engine_kwargs.speculative.history_tokens=50000"]), host_mem_gb=24)
    assert demo.total_gb - nodraft.total_gb == pytest.approx(165 * 150_000 / 1e9, abs=2e-3)  # totals to the MB
    tight = _plan("configs/demo_cpu.yaml", host_mem_gb=2)
    assert not tight.fits and "Try:" in tight.why


# Runs ``cmd`` as its child and prints the child's peak RSS (KiB) from wait4. Why the extra process:
# Linux carries a process's high-water mark across exec (``signal->maxrss`` takes the old mm's), and a
# child forked from this pytest process starts with a copy of it (1.4 GB late in the suite), so
# wait4 on a direct child reports the test runner's size, not the trainer's. A child of this small
# interpreter starts from its few MB.
_MEASURE = (
    "import os, subprocess, sys\n"
    "p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)\n"
    "err = p.stderr.read()\n"
    "_, status, usage = os.wait4(p.pid, 0)\n"
    "code = os.waitstatus_to_exitcode(status)\n"
    "sys.stderr.buffer.write(err[-2000:])\n"
    "print(usage.ru_maxrss if code == 0 else -1)\n"
)


def _peak_rss_gb(cmd: list[str], cwd: str) -> float:
    """Peak resident set of the process ``cmd`` (the kernel's count, from wait4 in a small parent)."""
    import os
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _MEASURE, *cmd], cwd=cwd, capture_output=True, text=True,
                         env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}, timeout=600)
    kib = int(out.stdout.strip() or -1)
    assert out.returncode == 0 and kib > 0, out.stderr[-2000:]
    return kib * 1024 / 1e9  # Linux: KiB


@pytest.mark.slow
def test_host_plan_matches_the_measured_peak_of_a_smoke_run(tmp_path):
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    plan = plan_memory(TrainConfig.from_yaml(root / "configs" / "smoke_cpu.yaml"))
    measured = _peak_rss_gb([sys.executable, "-m", "mx_train.cli", "train", "--config", "configs/smoke_cpu.yaml",
                             "--max-steps", "1", "--out", str(tmp_path / "run"), "--no-progress"], str(root))
    assert abs(plan.total_gb - measured) <= 0.3 * measured, (plan.total_gb, measured)
