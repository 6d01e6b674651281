"""Done-when check of the agents issue: full design + execution episodes with the embedded SmolLM2 on
CPU, and recorded token ids / logprobs against an independent re-scoring by the same model.

    .venv/bin/python benchmarks/smollm2_episodes.py --episodes 4 --max-new-tokens 48 --design-tokens 192

For each env id: K episodes with the shared policy (SmolLM2 designs and executes, batched across the
K envs), then K with ``design:single`` (the library single-agent design, SmolLM2 answering) so that
executor turns exist even when the model writes no valid design. Every LLM turn is re-scored with a
plain full forward pass (``log_softmax(logits / T)`` at the turn's sampling temperature), and its
prompt ids are compared with the chat template applied to its messages. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time


def rescore(model, prompt_ids: list[int], response_ids: list[int], temperature: float) -> list[float]:
    import torch

    ids = torch.tensor([prompt_ids + response_ids])
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0].float()
    t = 1.0 if temperature <= 1e-5 else temperature
    lp = torch.log_softmax(logits[len(prompt_ids) - 1 : -1] / t, dim=-1)
    return lp.gather(1, torch.tensor(response_ids)[:, None])[:, 0].tolist()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--envs", nargs="+", default=["MetaAgentX-GSM8K-v0", "MetaAgentX-Arithmetic-v0"])
    ap.add_argument("--episodes", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--design-tokens", type=int, default=192)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import dataclasses

    import gymnasium as gym

    import mx_envs  # noqa: F401
    from mx_agents.backends.hf import HFBackend
    from mx_agents.policies import ExecutorPolicy, FixedDesignPolicy, SharedPolicy
    from mx_agents.policies.llm import DEFAULT_DESIGNER_PARAMS, DEFAULT_EXECUTOR_PARAMS
    from mx_agents.rollout import RolloutStats, run_episodes
    from mx_envs.mas.session import PRELOAD
    from mx_envs.sandbox import get_sandbox

    backend = HFBackend("default", device="cpu", seed=args.seed)
    d_params = dataclasses.replace(DEFAULT_DESIGNER_PARAMS, max_new_tokens=args.design_tokens)
    e_params = dataclasses.replace(DEFAULT_EXECUTOR_PARAMS, max_new_tokens=args.max_new_tokens)
    sandbox = get_sandbox("process", extra_preload=PRELOAD, pool_size=max(4, args.episodes))
    report: dict = {"model": "SmolLM2-135M-Instruct (embedded)", "args": vars(args), "runs": []}
    worst = 0.0
    prompt_mismatch = 0
    scored = 0
    for env_id in args.envs:
        for label, policy in (
            ("shared", SharedPolicy(backend, d_params, e_params, seed=args.seed)),
            ("design:single", FixedDesignPolicy("single", ExecutorPolicy(backend, e_params, seed=args.seed))),
        ):
            envs = [gym.make(env_id, sandbox=sandbox).unwrapped for _ in range(args.episodes)]
            stats = RolloutStats()
            t0 = time.perf_counter()
            recs = run_episodes(envs, policy, seeds=args.seed, progress=False, stats=stats)
            wall = time.perf_counter() - t0
            diffs = []
            for r in recs:
                for t in r.turns:
                    if not t.from_llm or not t.response_ids:
                        continue
                    if backend.encode_chat(t.messages) != t.prompt_ids:
                        prompt_mismatch += 1
                    temp = t.metadata.get("sampling", {}).get("temperature", 1.0)
                    ref = rescore(backend.model, t.prompt_ids, t.response_ids, temp)
                    diffs.append(max(abs(a - b) for a, b in zip(ref, t.logprobs, strict=True)))
                    scored += 1
            worst = max([worst, *diffs])
            report["runs"].append({
                "env_id": env_id,
                "policy": label,
                "episodes": len(recs),
                "wall_s": round(wall, 1),
                "rounds": stats.rounds,
                "llm_turns": sum(r.llm_calls for r in recs),
                "valid_designs": sum(bool(r.design_valid) for r in recs),
                "correct": sum(bool(r.correct) for r in recs),
                "mean_reward": sum(r.reward for r in recs) / len(recs),
                "termination_reasons": [r.termination_reason for r in recs],
                "answers": [r.answer if r.answer is None else str(r.answer)[:60] for r in recs],
                "max_abs_logprob_diff": max(diffs) if diffs else None,
            })
            print(json.dumps(report["runs"][-1]), flush=True)
            for env in envs:
                env.close()
    report["turns_rescored"] = scored
    report["prompt_id_mismatches"] = prompt_mismatch
    report["max_abs_logprob_diff"] = worst
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}))


if __name__ == "__main__":
    main()
