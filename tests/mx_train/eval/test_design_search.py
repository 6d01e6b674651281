"""Baselines chosen on a validation slice: best library design, ADAS-style archive search (no model)."""

from __future__ import annotations

import json
import re

import pytest

from mx_train.eval.design_search import adas_search, select_library_design
from mx_train.eval.runner import EvalConfig

pytestmark = pytest.mark.slow

VAL = EvalConfig(env_ids=["MetaAgentX-Arithmetic-v0"], policy="x", limit=3, batch_size=4,
                 env_kwargs={"split": "train", "loader_kwargs": {"level": 1, "n": 3}})


def _executor():
    """Right only when asked by an agent named 'judge' or 'solver1' (so designs score differently)."""
    from mx_agents.policies.scripted import ScriptedPolicy

    def reply(turn):
        m = re.search(r"What is (\d+) \+ (\d+)", turn.messages[-1]["content"])
        right = turn.agent in ("solver", "checker") and m
        return "\\boxed{" + (str(int(m.group(1)) + int(m.group(2))) if right else "-1") + "}"

    return ScriptedPolicy(fn=reply)


class FakeMeta:
    """A meta-agent that proposes a fixed reply per round and records what it was shown."""

    def __init__(self, replies):
        self.replies = list(replies)
        self.seen = []

    def generate(self, requests):
        from mx_agents.backends.base import Completion

        self.seen.append(requests[0].messages[-1]["content"])
        return [Completion(text=self.replies.pop(0), prompt_ids=[], response_ids=[], logprobs=None, finish_reason="stop")]


def test_select_library_design_picks_best_validation_score(tmp_path):
    doc = select_library_design(["vote", "single"], _executor(), VAL, tmp_path)
    assert doc["scores"]["single"] == 1.0 and doc["scores"]["vote"] == 0.0 and doc["best"] == "single"
    assert json.loads((tmp_path / "selection.json").read_text())["best"] == "single"


def test_adas_archive_grows_with_scored_proposals(tmp_path):
    good = ('```python\ndef forward(task):\n    c = Agent("checker", system="x")\n'
            '    return final_answer(c(task))\n```')
    meta = FakeMeta(["no code here", good])
    doc = adas_search(meta, _executor(), VAL, tmp_path, rounds=2, seed_designs=("vote",))
    names = [a["name"] for a in doc["archive"]]
    assert names == ["vote", "adas_1", "adas_2"]
    by = {a["name"]: a for a in doc["archive"]}
    assert by["adas_1"]["valid"] is False and by["adas_1"]["score"] == 0.0
    assert by["adas_2"]["valid"] is True and by["adas_2"]["score"] == 1.0
    assert doc["best"]["name"] == "adas_2"
    assert "accuracy 0.00" in meta.seen[1]  # the meta-agent sees the archive with its scores
    assert json.loads((tmp_path / "archive.json").read_text())["best"]["name"] == "adas_2"
