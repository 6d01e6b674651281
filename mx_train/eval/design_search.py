"""Design-selection baselines of the paper's table, chosen on a validation slice (never on test tasks).

* :func:`select_library_design`: every library design is evaluated on the validation slice; the best
  one is the "best library design" row (its test score is that design's own test run).
* :func:`adas_search`: an automatic-design search in the spirit of ADAS (Hu et al., 2024): an archive
  starts with library designs and their validation scores; each round a meta-agent (any policy spec's
  model) reads the archive and proposes a new design script; the proposal is evaluated on the
  validation slice and added to the archive with its score (invalid proposals score 0 and stay in
  the archive, so the meta-agent sees its failures). The archive's best design is then evaluated on
  the test tasks. ``archive.json`` records every proposal, its score and the round.

Both use one executor for every design's agents, so the rows compare designs, not executors.
:func:`search_rows` runs them for ``mx table`` and returns their table rows.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

META_SYSTEM = (
    "You design multi-agent systems as Python scripts. A script defines `def forward(task):` and returns "
    "the final answer (math: \\boxed{...}; code: one ```python block). Available: Agent(name, system=..., "
    "tools=(\"python\",)), agent(text) -> reply, ensemble(agents, task, aggregate=\"vote\"), "
    "reflect(solver, critic, task, rounds=1), debate(agents, judge, task, rounds=2), final_answer(reply)."
)


def _val_accuracy(results: dict[str, Any]) -> float:
    envs = results.get("envs", {})
    accs = [e["accuracy"]["mean"] for e in envs.values() if e.get("n_episodes")]
    return sum(accs) / len(accs) if accs else 0.0


def _fixed_policy(executor: Any, source: str) -> Any:
    from mx_agents.policies.fixed import FixedDesignPolicy

    return FixedDesignPolicy(None, executor, source=source)


def select_library_design(designs: Sequence[str], executor: Any, val_cfg: Any, out: Path,
                          progress: bool = False) -> dict[str, Any]:
    """Validation accuracy of each library design and the best one (``{"best", "scores"}``)."""
    from mx_agents.policies.design_prompt import library_design_source
    from mx_train.eval.runner import run_eval

    scores: dict[str, float] = {}
    for name in designs:
        cfg = _with(val_cfg, policy=f"design:{name}")
        res = run_eval(cfg, out / "val" / name, policy=_fixed_policy(executor, library_design_source(name)),
                       progress=progress)
        scores[name] = _val_accuracy(res)
    best = max(scores, key=lambda k: (scores[k], -list(designs).index(k)))
    doc = {"best": best, "scores": scores}
    (out / "selection.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return doc


def _with(cfg: Any, **changes: Any) -> Any:
    import dataclasses

    return dataclasses.replace(cfg, **changes)


def _meta_messages(archive: list[dict[str, Any]], kind: str) -> list[dict[str, str]]:
    shown = sorted(archive, key=lambda a: -a["score"])[:6]
    lines = [f"Archive of designs for {kind} tasks, with validation accuracy:"]
    for a in shown:
        lines.append(f"\n# {a['name']}: accuracy {a['score']:.2f}\n```python\n{a['source'].strip()}\n```")
    lines.append("\nWrite a new design that should beat them: one ```python block defining forward(task).")
    return [{"role": "system", "content": META_SYSTEM}, {"role": "user", "content": "\n".join(lines)}]


def adas_search(meta_backend: Any, executor: Any, val_cfg: Any, out: Path, *, rounds: int = 3,
                seed_designs: Sequence[str] = ("single", "vote", "reflection"), kind: str = "math",
                max_new_tokens: int = 512, temperature: float = 0.8, seed: int = 0,
                progress: bool = False) -> dict[str, Any]:
    """Run the search; returns ``{"best": entry, "archive": [...]}`` and writes ``OUT/archive.json``."""
    from mx_agents.backends.base import ChatRequest, SamplingParams
    from mx_agents.policies.design_prompt import extract_script, library_design_source
    from mx_train.eval.runner import run_eval

    out.mkdir(parents=True, exist_ok=True)
    archive: list[dict[str, Any]] = []
    for name in seed_designs:
        src = library_design_source(name)
        res = run_eval(_with(val_cfg, policy=f"design:{name}"), out / "val" / name,
                       policy=_fixed_policy(executor, src), progress=progress)
        archive.append({"name": name, "source": src, "score": _val_accuracy(res), "round": 0, "valid": True})
    for r in range(1, rounds + 1):
        params = SamplingParams(temperature=temperature, top_p=0.95, max_new_tokens=max_new_tokens, seed=seed + r)
        text = meta_backend.generate([ChatRequest(_meta_messages(archive, kind), params)])[0].text
        script = extract_script(text)
        name = f"adas_{r}"
        entry: dict[str, Any] = {"name": name, "source": script or "", "raw": text, "round": r,
                                 "valid": script is not None, "score": 0.0}
        if script is not None:
            res = run_eval(_with(val_cfg, policy=f"adas:{name}"), out / "val" / name,
                           policy=_fixed_policy(executor, script), progress=progress)
            entry["score"] = _val_accuracy(res)
            entry["valid"] = any(e.get("design_valid_rate", 0) > 0 for e in res.get("envs", {}).values())
        archive.append(entry)
    best = max(archive, key=lambda a: (a["score"], -a["round"]))
    doc = {"best": {k: best[k] for k in ("name", "score", "round")}, "archive": archive}
    (out / "archive.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return doc


def evaluate_design(source: str, executor: Any, test_cfg: Any, out: Path, progress: bool = False) -> dict[str, Any]:
    """Test-set run of one design script (the selected/searched design's row)."""
    from mx_train.eval.runner import run_eval

    return run_eval(test_cfg, out, policy=_fixed_policy(executor, source), progress=progress)


def search_rows(
    test_cfg: Any, designs: Sequence[str], out: Path, *, executor: str, select_design: bool, adas_rounds: int,
    meta: str | None, val_split: str, val_limit: int, seed: int, run: bool = True, progress: bool = False,
) -> list[Any]:
    """The table rows chosen on the validation slice (``val_limit`` tasks of ``val_split`` per env):
    the best of ``designs`` (``select_design``) and the best design of an ADAS-style search of
    ``adas_rounds`` rounds by the ``meta`` model (default: the executor's). ``test_cfg`` is the test
    runs' :class:`~mx_train.eval.runner.EvalConfig`; ``run=False`` reads earlier results only."""
    import dataclasses

    from mx_train.eval.baselines_table import DESIGN_LABELS, TableRow
    from mx_train.eval.trace import slug

    rows = []
    search_dir = out / "search"
    val_cfg = dataclasses.replace(test_cfg, limit=val_limit, env_kwargs={**test_cfg.env_kwargs, "split": val_split})
    executor_policy = None
    if run:
        from mx_agents.policies.spec import parse_policy_spec

        executor_policy = parse_policy_spec("design:single", executor, max_new_tokens=test_cfg.max_new_tokens,
                                            temperature=test_cfg.temperature, seed=seed).executor
    if select_design:
        if not run:
            sel = json.loads((search_dir / "select" / "selection.json").read_text(encoding="utf-8"))
        else:
            (search_dir / "select").mkdir(parents=True, exist_ok=True)
            sel = select_library_design(designs, executor_policy, val_cfg, search_dir / "select", progress=progress)
        best = sel["best"]
        label = f"Best library design (val: {DESIGN_LABELS.get(best, best)})"
        rows.append(TableRow(label, f"design:{best}", executor, out / "runs" / slug(f"design_{best}")))
        print(f"== {label}: validation accuracy {sel['scores']}")
    if adas_rounds > 0:
        adas_dir = search_dir / "adas"
        if run:
            from mx_agents.backends import get_backend
            from mx_agents.policies.spec import resolve_model_path

            meta_backend = get_backend(resolve_model_path(meta or executor))
            doc = adas_search(meta_backend, executor_policy, val_cfg, adas_dir, rounds=adas_rounds, seed=seed,
                              progress=progress)
            best_entry = next(a for a in doc["archive"] if a["name"] == doc["best"]["name"])
            evaluate_design(best_entry["source"], executor_policy,
                            dataclasses.replace(test_cfg, policy=f"adas:{best_entry['name']}"),
                            out / "runs" / "adas_best", progress=progress)
            print(f"== ADAS-style search: archive {[(a['name'], round(a['score'], 3)) for a in doc['archive']]}")
        rows.append(TableRow("ADAS-style search (best of archive)", "adas", executor, out / "runs" / "adas_best"))
    return rows
