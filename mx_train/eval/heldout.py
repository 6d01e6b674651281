"""Held-out evaluation of a training run: base vs cold start vs trained, and a designer ablation.

``mx heldout --run RUN`` (the last step of ``make demo``) evaluates, on Arithmetic **test** tasks of
each level (never drawn by training, which uses the train split):

* ``base``: the untrained model as designer and executor;
* ``cold_start``: the policy after the SFT cold start (``RUN/cold_start``, when the run saved it);
* ``trained``: the final checkpoint as designer and executor (the whole system);
* ``trained_executor+cold_designer``: the trained executor under the cold-start designer (what the
  designer's RL phases are worth, with the executor held fixed).

Every condition is played with the designer prompt and sampling the run trained with (read from its
checkpoint), so only the weights differ. ``heldout.json`` holds per condition and level the accuracy
with its 95 % interval (mx eval's bootstrap over tasks), the mean over levels, and the design-structure distribution
(``single``/``ensemble``/... with ``+tools``) of the designs played; per-episode traces stay under
``RUN/heldout/<condition>/L<level>/`` for reading.
"""

from __future__ import annotations

import gc
import json
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from mx_agents.progress import progress_bar
from mx_train.memory_watch import PhaseRSS, release_free_heap

ENV_ID = "MetaAgentX-Arithmetic-v0"
# base alone, then the cold start, then the two conditions that play the trained model (one of them
# with the cold-start designer): at most two models are ever loaded, each released after its last use.
_RUN_ORDER = ("base", "cold_start", "trained_executor+cold_designer", "trained")
# Memory bounds of the evaluation's HF backends: up to 3 levels x 20-64 episodes decode at once, and a
# batch cache of 60 rows of long conversations grows to several GB (mx_agents.backends.hf); a smaller
# prefix cache than training's, since two backends may hold one each.
EVAL_ENGINE: dict[str, Any] = {"kv_cache_mb": 768.0, "prefix_cache_mb": 256.0}
TEST_STREAM = 200  # test tasks generated per level (the first n are evaluated)


def _policy(designer: str, executor: str, settings: dict[str, Any], backends: dict[str, Any], seed: int,
            batch_size: int, engine_kwargs: dict[str, Any]) -> Any:
    import dataclasses

    from mx_agents.backends import get_backend
    from mx_agents.policies.design_prompt import DesignerPrompt
    from mx_agents.policies.llm import (
        DEFAULT_DESIGNER_PARAMS,
        DEFAULT_EXECUTOR_PARAMS,
        SharedPolicy,
        SplitPolicy,
    )
    from mx_agents.policies.spec import resolve_model_path

    def backend(spec: str) -> Any:
        if spec not in backends:
            backends[spec] = get_backend(resolve_model_path(spec), device="cpu", dtype="float32",
                                         max_batch_size=batch_size, **engine_kwargs)
        return backends[spec]

    def params(raw: dict[str, Any], default: Any) -> Any:
        names = {f.name for f in dataclasses.fields(default)}
        return dataclasses.replace(default, **{k: v for k, v in raw.items() if k in names})

    d = params(settings.get("designer", {}), DEFAULT_DESIGNER_PARAMS)
    e = params(settings.get("executor", {}), DEFAULT_EXECUTOR_PARAMS)
    prompt = DesignerPrompt(**settings["designer_prompt"]) if settings.get("designer_prompt") else None
    if designer == executor:
        return SharedPolicy(backend(designer), d, e, prompt=prompt, seed=seed)
    return SplitPolicy(backend(designer), backend(executor), d, e, prompt=prompt, seed=seed)


def _families(run_dir: Path) -> Counter[str]:
    from mx_train.eval.design_structure import INVALID, design_family
    from mx_train.eval.trace import upgrade_stored

    out: Counter[str] = Counter()
    for path in sorted((run_dir / "traces").rglob("*.json")):
        trace = upgrade_stored(json.loads(path.read_text(encoding="utf-8")))
        out[design_family(trace.get("design_script")) if trace.get("design_valid") else INVALID] += 1
    return out


def run_heldout(
    run: str | Path,
    *,
    levels: tuple[int, ...] = (1, 2, 3),
    n: int = 40,
    seed: int = 0,
    batch_size: int = 64,
    out: str | Path | None = None,
    base_model: str = "default",
    progress: bool = False,
    conditions: Sequence[str] | None = None,
    engine_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate the conditions of the module docstring; writes and returns the ``heldout.json`` document.

    ``engine_kwargs`` go to every HF backend (default :data:`EVAL_ENGINE`: the memory bounds). The
    conditions run in an order that needs at most two models at once, and a model no later condition
    plays is released before the next one starts; ``memory`` in the document holds each condition's
    peak resident set of this process."""
    from mx_train.eval.runner import EvalConfig, run_eval
    from mx_train.eval.trained_settings import trained_settings

    run = Path(run)
    settings = trained_settings(str(run)) or _settings_from_config(run)
    if settings is None:
        raise FileNotFoundError(f"{run} holds no training checkpoint (checkpoints/step_*/trainer_state.json)")
    trained = str(run)
    cold = run / "cold_start"
    plan: list[tuple[str, str, str]] = [("base", base_model, base_model)]
    if (cold / "checkpoints").is_dir():
        plan.append(("cold_start", str(cold), str(cold)))
    if (run / "checkpoints").is_dir():
        plan.append(("trained", trained, trained))
        if (cold / "checkpoints").is_dir():
            plan.append(("trained_executor+cold_designer", str(cold), trained))
    if conditions is not None:  # a subset (e.g. the base model while the run still trains); resumable
        unknown = set(conditions) - {p[0] for p in plan}
        if unknown:
            raise ValueError(f"conditions {sorted(unknown)} are not available for {run}; available: {[p[0] for p in plan]}")
        plan = [p for p in plan if p[0] in conditions]
    order = [p[0] for p in plan]  # the document's order; the run's order shares models between neighbours
    plan.sort(key=lambda p: _RUN_ORDER.index(p[0]))
    engine_kwargs = {**EVAL_ENGINE, **(engine_kwargs or {})}
    rss = PhaseRSS().start()
    backends: dict[str, Any] = {}
    doc: dict[str, Any] = {
        "run": str(run), "env_id": ENV_ID, "split": "test", "tasks_per_level": n, "seed": seed,
        "settings": {k: v for k, v in settings.items() if k != "source"}, "checkpoint": settings["source"],
        "conditions": {},
    }
    for index, (name, designer, executor) in enumerate(plan, 1):
        for spec in [k for k in backends if k not in (designer, executor)]:
            del backends[spec]  # no later condition plays it (see _RUN_ORDER): free its weights and caches
        gc.collect()
        release_free_heap()
        policy = _policy(designer, executor, settings, backends, seed, batch_size, engine_kwargs)
        # One bar per condition, advanced per finished episode of any level: rate and ETA.
        bar = progress_bar(len(levels) * n, f"heldout {index}/{len(plan)} {name}") if progress else None

        def one_level(level: int, name: str = name, designer: str = designer, executor: str = executor,
                      policy: Any = policy, bar: Any = bar) -> tuple[dict[str, Any], Counter[str]]:
            cfg = EvalConfig(env_ids=[ENV_ID], policy=f"{name}:{designer}", executor=executor, seed=seed, limit=n,
                             batch_size=batch_size, trained_settings=False,
                             # a fixed test stream; `limit` takes its first n (so a later, larger n reuses these)
                             env_kwargs={"split": "test", "loader_kwargs": {"level": level, "n": TEST_STREAM}})
            out_dir = run / "heldout" / name / f"L{level}"
            res = run_eval(cfg, out_dir, policy=policy, progress=False, bar=bar)
            acc = res["envs"][ENV_ID]["accuracy"]
            fam = _families(out_dir)
            return {"accuracy": acc["mean"], "low": acc["low"], "high": acc["high"],
                    "n": res["envs"][ENV_ID]["n_episodes"], "structures": dict(fam)}, fam

        # The levels run at once: their episodes' LLM turns share the backend's batches (a decoding
        # step costs little more for 60 rows than for 20 on a CPU). Sampling seeds derive from
        # (policy seed, episode, turn), not from call order, so the result is the sequential one.
        try:
            with rss.phase(name), ThreadPoolExecutor(max_workers=len(levels), thread_name_prefix="heldout") as pool:
                results = list(pool.map(one_level, levels))
        finally:
            if bar is not None:
                bar.close()
        del policy, one_level  # the closure holds the policy too: both must go for its models to be freed
        per_level: dict[str, Any] = {}
        families: Counter[str] = Counter()
        for level, (row, fam) in zip(levels, results, strict=True):
            per_level[str(level)] = row
            families.update(fam)
        mean = sum(v["accuracy"] for v in per_level.values()) / len(per_level)
        total = sum(families.values())
        doc["conditions"][name] = {
            "designer": designer, "executor": executor, "levels": per_level, "mean_accuracy": mean,
            "structures": {k: v / total for k, v in sorted(families.items())},
        }
    rss.stop()
    doc["conditions"] = {k: doc["conditions"][k] for k in order}
    doc["memory"] = {"peak_rss_gb": {k.rsplit("/", 1)[-1]: round(v, 3) for k, v in rss.metrics().items()
                                     if k.rsplit("/", 1)[-1] in doc["conditions"] or k == "memory/peak_rss_gb"},
                     "engine": engine_kwargs}
    c = {k: v["mean_accuracy"] for k, v in doc["conditions"].items()}
    pairs = {"system_gain_points": ("trained", "base"),
             "designer_gain_points": ("trained", "trained_executor+cold_designer"),
             "rl_gain_points": ("trained", "cold_start"), "cold_start_gain_points": ("cold_start", "base")}
    doc["summary"] = {k: 100 * (c[a] - c[b]) for k, (a, b) in pairs.items() if a in c and b in c}
    path = Path(out) if out else run / "heldout.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return doc


def _settings_from_config(run: Path) -> dict[str, Any] | None:
    """Before the first checkpoint: the prompt and sampling of the run's ``train_config.json``."""
    path = run / "train_config.json"
    if not path.is_file():
        return None
    rollout = json.loads(path.read_text(encoding="utf-8")).get("rollout", {})
    return {**{k: rollout.get(k, {}) for k in ("designer_prompt", "designer", "executor")}, "source": str(path)}


def render(doc: dict[str, Any]) -> str:
    """The held-out table as text: accuracy [95 % CI] per level, the mean, the structures played."""
    conds = doc["conditions"]
    levels = list(next(iter(conds.values()))["levels"])
    lines = [f"held-out {doc['env_id']} ({doc['split']} split, {doc['tasks_per_level']} tasks per level)",
             f"{'condition':34s}" + "".join(f"{'L' + lv:>20s}" for lv in levels) + f"{'mean':>8s}"]
    for name, c in conds.items():
        cells = "".join(
            f"{100 * v['accuracy']:7.1f} [{100 * v['low']:4.1f},{100 * v['high']:5.1f}]" for v in c["levels"].values()
        )
        lines.append(f"{name:34s}{cells}{100 * c['mean_accuracy']:8.1f}")
    lines.append("designs played (share):")
    for name, c in conds.items():
        lines.append(f"  {name:32s} " + ", ".join(f"{k} {v:.2f}" for k, v in c["structures"].items()))
    lines.append("summary: " + ", ".join(f"{k} {v:+.1f}" for k, v in doc["summary"].items()))
    return "\n".join(lines)
