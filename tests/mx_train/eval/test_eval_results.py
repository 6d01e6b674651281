import json

import pytest

from mx_train.eval.results import EpisodeRecord, read_records, render_markdown, summarize, write_results


def rec(env, task, sample, correct, structure="single", valid=True, calls=2, pt=100, rt=20, reason="completed"):
    return EpisodeRecord(env, task, sample, correct, float(correct), valid, reason, structure, calls, pt, rt)


def test_summary_figures():
    recs = [
        rec("A", "t1", 0, True), rec("A", "t1", 1, False, structure="ensemble", calls=6),
        rec("A", "t2", 0, False, structure="invalid", valid=False, calls=1, pt=50, rt=5, reason="no_code"),
        rec("A", "t2", 1, False),
        rec("B", "u1", 0, True, structure="debate"),
    ]
    res = summarize(recs, {"policy": "p"}, seed=0)
    a = res["envs"]["A"]
    assert a["accuracy"]["mean"] == pytest.approx(0.25)  # t1: 1/2, t2: 0/2
    assert a["n_tasks"] == 2 and a["n_episodes"] == 4
    assert a["design_valid_rate"] == pytest.approx(0.75)
    assert a["mean_llm_calls"] == pytest.approx(11 / 4)
    assert a["mean_tokens"] == pytest.approx((120 * 3 + 55) / 4)
    assert a["structures"]["single"] == pytest.approx(0.5) and a["structures"]["invalid"] == pytest.approx(0.25)
    assert a["termination_reasons"] == {"completed": 3, "no_code": 1}
    # overall accuracy is the mean over envs (A 0.25, B 1.0), like the paper's Avg. column
    assert res["overall"]["accuracy"]["mean"] == pytest.approx(0.625)
    assert res["overall"]["n_episodes"] == 5
    md = render_markdown(res)
    assert "| A | 2 | 4 | 25.0 [" in md and "**overall**" in md and "no_code: 1" in md


def test_records_file_round_trip_resume_semantics(tmp_path):
    path = tmp_path / "episodes.jsonl"
    a, b = rec("A", "t1", 0, False), rec("A", "t1", 0, True)
    path.write_text(a.to_json() + "\n" + b.to_json() + "\n" + '{"env_id": "A", "task')  # torn last line
    got = read_records(path)
    assert got == [b]  # the later record for the same key wins; the torn line is ignored
    path.write_text("garbage\n" + b.to_json() + "\n")
    with pytest.raises(ValueError, match="not an episode record"):
        read_records(path)
    assert read_records(tmp_path / "none.jsonl") == []


def test_write_results(tmp_path):
    jp, mp = write_results(tmp_path / "o", summarize([], {"policy": "x"}))
    assert json.loads(jp.read_text())["overall"]["n_episodes"] == 0
    assert mp.read_text().startswith("# Evaluation results")


def test_stored_files_of_the_old_spelling_read_as_design_valid(tmp_path):
    """Episode records and traces written before the rename (``valid_design``) keep their validity."""
    from mx_train.eval.trace import EpisodeTrace, load_trace

    old = json.loads(rec("A", "t1", 0, True, valid=True).to_json())
    old["valid_design"] = old.pop("design_valid")
    path = tmp_path / "episodes.jsonl"
    path.write_text(json.dumps(old) + "\n")
    (got,) = read_records(path)
    assert got.design_valid is True
    trace = EpisodeTrace(episode_id="e", env_id="A", task_id="t1", sample=0, seed=0, task_prompt="p",
                         design_valid=True).to_dict()
    trace["valid_design"] = trace.pop("design_valid")
    (tmp_path / "t.json").write_text(json.dumps(trace))
    assert load_trace(tmp_path / "t.json").design_valid is True
