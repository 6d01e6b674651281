"""SFT: data loading, rejection filtering, loss goes down, `mx sft` end to end."""

from __future__ import annotations

import json
import random

import pytest

from mx_agents.transition import Transition
from mx_train.learner import Learner
from mx_train.sft import SFTExample, examples_from_transitions, load_sft_jsonl, train_sft


def test_load_jsonl_shapes_and_reward_filter(tmp_path, tiny):
    _, tok = tiny
    f = tmp_path / "d.jsonl"
    rows = [
        {"prompt_ids": [5, 6], "response_ids": [7]},
        {"messages": [{"role": "user", "content": "What is 12 + 30?"}], "response": "42"},
        {"prompt": "Hello", "response": " world"},
        {"prompt_ids": [5], "response_ids": [8], "reward": 0.0},  # rejected
        {"prompt_ids": [5], "response_ids": [9], "reward": 1.0},
    ]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    ex = load_sft_jsonl(f, tok)
    assert len(ex) == 4 and ex[0].response_ids == [7] and ex[3].response_ids == [9]
    assert ex[1].response_ids[-1] == tok.eos_token_id
    assert tok.decode(ex[1].prompt_ids).endswith("<|im_start|>assistant\n")
    assert len(load_sft_jsonl(f, tok, min_reward=None)) == 5
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "x"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1: unsupported SFT record"):
        load_sft_jsonl(bad, tok)
    with pytest.raises(FileNotFoundError):
        load_sft_jsonl(tmp_path / "none.jsonl")


def test_examples_from_transitions_rejection_sampling():
    def t(reward, role):
        return Transition("e", "t", "t", 0, 0, role, role, 0, [1], [2], None, reward=reward)

    ts = [t(1.0, "designer"), t(0.0, "executor"), t(1.0, "executor")]
    assert len(examples_from_transitions(ts)) == 2
    assert len(examples_from_transitions(ts, roles=["designer"])) == 1


def test_sft_loss_decreases_and_prompt_is_masked(tiny):
    model, tok = tiny
    prompt = tok("What is 12 + 30?", add_special_tokens=False)["input_ids"]
    examples = [SFTExample(prompt, tok(" 42", add_special_tokens=False)["input_ids"] + [tok.eos_token_id])] * 4
    learner = Learner(model, {"lr": 1e-2, "micro_batch_tokens": 40})
    hist = train_sft(learner, examples, epochs=8, batch_size=4, rng=random.Random(0))
    assert hist[-1]["loss"] < 0.5 * hist[0]["loss"]
    assert hist[0]["tokens"] == 4 * len(examples[0].response_ids)  # only response tokens are trained


def test_mx_sft_cli(tmp_path, tiny):
    from mx_train.cli import main

    model, tok = tiny
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": f"What is {i} + 30?", "response": f" {i + 30}"}) for i in range(6)))
    out = tmp_path / "out"
    rc = main(["sft", "--data", str(data), "--model", str(model_dir), "--out", str(out), "--epochs", "2",
               "--lr", "1e-3", "--batch-size", "3", "--no-tensorboard", "--device", "cpu"])
    assert rc == 0 and (out / "config.json").exists() and (out / "metrics.jsonl").exists()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 4
    assert main(["sft", "--data", str(tmp_path / "missing.jsonl"), "--model", str(model_dir), "--out", str(out)]) == 1
