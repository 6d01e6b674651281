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
