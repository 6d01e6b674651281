"""One answer extractor: the MAS library reads in a reply exactly the answer the grader reads.

Table-driven over probe texts (the classes on which the library and the grader used to disagree, and
answer forms of the real benchmarks; with ``MX_DATA_DIR`` every real reference too), in-process and
inside the sandboxed script process (the library preloaded in the warm server), and a vote inside a
design that agrees with the grade.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import pytest
from mas_doubles import ScriptedLLM, drive

from mx_envs.mas import lib
from mx_envs.mas.protocol import TerminationReason as R
from mx_envs.mas.session import MASSession
from mx_envs.tasks import math_extract as grader
from mx_envs.tasks.cleanup import normalize_math
from mx_envs.tasks.math_grader import _PLAIN_NUMBER_RE, grade_math

# (text, the grader's reading). The first block is where the library used to read something else.
PROBES: list[tuple[str, str | None]] = [
    (r"first \boxed{3}, then cut off: \boxed{4", None),  # unclosed last box: no answer, not the earlier one
    (r"\boxed{3} and a cut \boxed{\frac{1}{", None),
    (r"\boxed{\boxed{5}}", r"\boxed{5}"),  # nested box: the outer one
    (r"so \boxed{2} or \boxed{\boxed{7}}", r"\boxed{7}"),
    (r"\fbox 7", "7"),  # \fbox with a space and a token
    (r"the result: \fbox {12}", "12"),
    (r"\boxed{a \{ b}", r"a \{ b"),  # escaped brace: content, not grouping
    (r"\boxed{\}}", r"\}"),
    (r"\boxed{\{1, 2\} \cup \{3\}}", r"\{1, 2\} \cup \{3\}"),
    (r"\boxedx{3} then \boxed{2}", "2"),  # \boxedx is another command
    ("The final answer is $42$.", "42"),  # no box: the answer phrase
    ("18 - 7 = 11\n#### 11", "11"),
    ("blah\nAnswer: (2, 3)", "(2, 3)"),
    # forms of the real answers (AIME, MATH-500, OlympiadBench, Minerva, GSM8K)
    (r"so \boxed{070}", "070"),
    (r"\boxed{\frac{\sqrt{3}}{2}}", r"\frac{\sqrt{3}}{2}"),
    (r"\boxed{\dfrac{33}{100}}.", r"\dfrac{33}{100}"),
    (r"\boxed{336^\circ}", r"336^\circ"),
    (r"\boxed{\begin{pmatrix} -1 & 0 \\ 0 & -1 \end{pmatrix}}", r"\begin{pmatrix} -1 & 0 \\ 0 & -1 \end{pmatrix}"),
    (r"\boxed{(-\infty, 2) \cup (3, \infty)}", r"(-\infty, 2) \cup (3, \infty)"),
    (r"\boxed{\text{Evelyn}}", r"\text{Evelyn}"),
    (r"\boxed{15\mbox{ cm}^2}", r"15\mbox{ cm}^2"),
    (r"\boxed{\left( 3, \frac{\pi}{2} \right)}", r"\left( 3, \frac{\pi}{2} \right)"),
    (r"\boxed{x^5 - x^4 + x^3 - x^2 + x - 1}", "x^5 - x^4 + x^3 - x^2 + x - 1"),
    (r"\boxed{\lambda_{\text {red}} / \sqrt{2}}", r"\lambda_{\text {red}} / \sqrt{2}"),
    (r"\boxed{\$18}", r"\$18"),
    (r"\boxed{1} then \boxed{2}", "2"),  # several boxes: the last (grade_math needs all of them right)
    (r"answer \boxed 5 done", "5"),
    (r"\boxed{}", ""),
    ("no answer here at all", None),
    ("", None),
    # a reply that is also a program: the math reading ignores the code
    ("```python\nprint(6 * 7)\n```\nso the answer is 42", "42"),
    ("```python\nprint(6 * 7)\n```\nFINAL ANSWER \\boxed{42}", "42"),
]


def _has_python_block(text: str) -> bool:
    return lib.extract_code(text, "python") is not None


@pytest.mark.parametrize("text, expected", PROBES)
def test_library_reads_what_the_grader_reads(text: str, expected: str | None) -> None:
    assert grader.extract_answer(text) == expected  # the table is the grader's reading
    assert lib.extract_answer(text, "math") == expected
    assert lib.extract_boxed(text) == grader.last_boxed(text)
    if not _has_python_block(text):
        assert lib.extract_answer(text) == expected  # the default reading of a reply without a program
    if expected is not None:  # final_answer keeps that reading and the grader reads it back
        assert grader.extract_answer(lib.final_answer(text, kind="math")) == expected


def test_the_default_reading_of_a_program_is_the_program() -> None:
    text = "```python\nprint(6 * 7)\n```\nso the answer is 42"
    assert lib.extract_answer(text) == "print(6 * 7)" and lib.extract_answer(text, "code") == "print(6 * 7)"
    assert lib.extract_answer(text + "\n\\boxed{42}") == "42"  # a box is the answer whatever else is there
    with pytest.raises(lib.MASError, match="kind"):
        lib.extract_answer(text, "essay")


@pytest.mark.data
def test_library_reads_every_real_reference_as_the_grader(data_dir) -> None:
    from mx_envs.tasks import load_tasks

    refs = [t.answer for name in ("aime24", "aime25", "math500", "olympiadbench", "minerva", "amc23", "gsm8k")
            for t in load_tasks(name, hub=False)]
    assert len(refs) > 1000
    templates = ("Thus the answer is \\boxed{%s}.", "\\fbox{%s}", "work \\boxed{%s} and a cut \\boxed{%s",
                 "The final answer is $%s$.", "Answer: %s", "\\boxed{\\boxed{%s}}")
    differ = []
    for ref in refs:
        for t in templates:
            text = t.replace("%s", ref)
            if lib.extract_answer(text, "math") != grader.extract_answer(text) or (
                    lib.extract_boxed(text) != grader.last_boxed(text)):
                differ.append(text)
    assert differ == []


def test_vote_key_is_the_graders_comparison_form() -> None:
    """Boxes the vote merges are the boxes the grader de-duplicates before comparing: one verdict."""
    answers = [a for _, a in PROBES if a] + ["$70$", "70", "70.", " 2", "2 ", r"\tfrac{1}{2}", r"\frac12",
                                              r"\mathbf{5}", r"\boxed{5}", "5", "x + 1", "x+1"]
    for a in answers:
        assert lib._norm(a) == (a if _PLAIN_NUMBER_RE.match(a) else normalize_math(a))
    groups: dict[str, list[str]] = {}
    for a in answers:
        groups.setdefault(lib._norm(a), []).append(a)
    merged = [g for g in groups.values() if len(g) > 1]
    assert len(merged) >= 4  # $70$/70, " 2"/"2 ", \tfrac{1}{2}/\frac12, \mathbf{5}/\boxed{5}/5
    refs = ["70", "2", "0.5", r"\frac{1}{2}", "5", "x+1", r"\text{Evelyn}"]
    for g in merged:
        for ref in refs:
            verdicts = {grade_math(f"\\boxed{{{a}}}", ref).correct for a in g}
            assert len(verdicts) == 1, (g, ref)
    assert lib._norm("x + 1") != lib._norm("x+1")  # spacing variants are kept apart (see vote_key)


# (replies, reference): each reply read by the grader; the vote counts what it reads.
VOTES = [
    ([r"\boxed{5}", r"first \boxed{3}, recheck: \boxed{5", r"\boxed{3}"], "5"),  # a cut reply has no vote
    ([r"\boxed{3}", r"so \boxed{7} then \boxed{3", r"\boxed{7} hmm \boxed{3", r"\boxed{7}"], "7"),
    ([r"\boxed{\boxed{5}}", r"\boxed{5}", r"\boxed{6}"], "5"),
    ([r"\fbox 7", r"\boxed{8}", r"\boxed{7}"], "7"),
    ([r"\boxed{\} 1}", r"\boxed{\} 2}", r"\boxed{\} 2}"], r"\} 2"),  # escaped braces are content
    (["The final answer is 12.", "Answer: 12", r"\boxed{13}"], "12"),  # the grader reads phrases too
    ([r"\boxed{\frac{1}{3}}", r"$\boxed{\dfrac{1}{2}}$", r"\boxed{\frac{1}{2}}", r"\boxed{0.4}"], r"\frac{1}{2}"),
    ([r"\boxed{\{1, 2\}}", r"\boxed{\{1, 3\}}", r"\boxed{\{1, 2\}}"], r"\{1,2\}"),
    ([r"\boxed{4", r"\boxed{4", r"\boxed{9}"], "4"),  # truncated replies have no answer: 9 wins
]


def _graders_vote(replies: list[str]) -> str | None:
    """The majority of the grader's readings (grouped by the form the grader compares; ties: first)."""
    readings = [a for a in (grader.extract_answer(r) for r in replies) if a is not None and a.strip()]
    if not readings:
        return None
    counts = Counter(grader.vote_key(a) for a in readings)
    best = max(counts.values())
    return next(a for a in readings if counts[grader.vote_key(a)] == best)


@pytest.mark.parametrize("replies, reference", VOTES)
def test_vote_inside_a_design_agrees_with_the_grade(sandbox, replies: list[str], reference: str) -> None:
    design = (
        "```python\nfrom mas import Agent, ensemble, extract_answer, final_answer, majority_vote\n\n"
        "def forward(task):\n"
        f"    voters = [Agent('v') for _ in range({len(replies)})]\n"
        "    reply = ensemble(voters, task, aggregate='vote')\n"
        "    best = majority_vote([extract_answer(r) for r in voters_replies(voters)])\n"
        "    return {'final': final_answer(reply, kind='math'), 'best': best}\n\n"
        "def voters_replies(voters):\n"
        "    return [a.history[-1]['content'] for a in voters]\n```"
    )
    it = iter(replies)
    fin = drive(MASSession(sandbox=sandbox), design, "T", ScriptedLLM([], default=lambda r: next(it)))
    assert fin.reason is R.COMPLETED, fin.error
    expected = _graders_vote(replies)
    assert fin.answer["best"] == expected  # the script's vote is the grader's vote
    final = fin.answer["final"]
    assert grader.extract_answer(final) == expected
    want = expected is not None and grade_math(f"\\boxed{{{expected}}}", reference).correct
    assert grade_math(final, reference).correct is want


def test_sandboxed_library_reads_every_probe_as_the_host_grader(sandbox) -> None:
    """The library as the script process has it (preloaded in the warm server) reads every probe."""
    design = (
        "```python\nimport json\nfrom mas import extract_answer, extract_boxed\n\n"
        "def forward(task):\n"
        "    texts = json.loads(task)\n"
        "    return [[extract_answer(t, 'math'), extract_boxed(t)] for t in texts]\n```"
    )
    texts = [t for t, _ in PROBES]
    fin = drive(MASSession(sandbox=sandbox), design, json.dumps(texts), ScriptedLLM([]))
    assert fin.reason is R.COMPLETED, fin.error
    assert fin.answer == [[grader.extract_answer(t), grader.last_boxed(t)] for t in texts]


def test_library_imports_only_the_standard_library() -> None:
    """The sandboxed script's imports: preloadable, no third-party module, no heavy part of mx_envs."""
    code = (
        "import sys; before = set(sys.modules); import mx_envs.mas.lib, mx_envs.mas.runner; "
        "new = set(sys.modules) - before; "
        "print(sorted(m for m in new if m.split('.')[0] not in sys.stdlib_module_names))"
    )
    env = {**os.environ, "MX_ENVS_NO_REGISTER": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    loaded = set(eval(out.stdout))  # noqa: S307 - our own subprocess's printed list
    allowed = {"mx_envs", "mx_envs.mas", "mx_envs.mas.lib", "mx_envs.mas.runner", "mx_envs.mas.protocol",
               "mx_envs.tasks", "mx_envs.tasks.record", "mx_envs.tasks.math_extract", "mx_envs.tasks.cleanup"}
    assert loaded <= allowed, loaded - allowed
    assert "mx_envs.tasks.math_extract" in loaded  # the grader's extractor itself, not a copy
