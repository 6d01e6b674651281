"""``mx sft``: supervised fine-tuning (cold start) on JSONL (prompt, response) pairs."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sft",
        help="supervised fine-tuning on (prompt, response) JSONL",
        description="Fine-tune a causal LM on responses (prompts masked). DATA lines: "
        '{"prompt_ids","response_ids"} | {"messages","response"} | {"prompt","response"}; '
        "lines with a 'reward' are kept only when reward > --min-reward (rejection sampling). "
        "Saves the model and tokenizer to OUT with save_pretrained, metrics to OUT/metrics.jsonl.",
    )
    p.add_argument("--data", required=True, help="JSONL file of examples")
    p.add_argument("--model", default="default", help="HF hub id, local directory, or 'default' (embedded SmolLM2)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--batch-size", type=int, default=8, help="sequences per optimizer step")
    p.add_argument("--micro-batch-tokens", type=int, default=4096, help="padded tokens per forward/backward")
    p.add_argument("--warmup-steps", type=int, default=0)
    p.add_argument("--min-reward", type=float, default=0.0)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0, help="shuffling seed")
    p.add_argument("--device", default="auto")
    p.add_argument("--lora-r", type=int, default=0, help="LoRA rank (0: full fine-tuning)")
    p.add_argument("--no-tensorboard", action="store_true")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    import random
    import sys
    from pathlib import Path

    from mx_train.learner import Learner, LearnerConfig
    from mx_train.metrics import MetricsLogger
    from mx_train.sft import load_sft_jsonl, train_sft

    try:
        from mx_agents.backends.embedded import resolve_model
        from mx_agents.backends.hf import load_hf_model, load_hf_tokenizer

        spec = resolve_model(args.model)
        tokenizer = load_hf_tokenizer(spec)
        examples = load_sft_jsonl(args.data, tokenizer, min_reward=args.min_reward)
        if not examples:
            print(f"mx sft: no usable examples in {args.data}", file=sys.stderr)
            return 1
        import torch

        model = load_hf_model(spec, "cpu", torch.float32)
    except (OSError, ValueError, ImportError) as exc:
        print(f"mx sft: {exc}", file=sys.stderr)
        return 1
    steps_per_epoch = -(-len(examples) // args.batch_size)
    cfg = LearnerConfig(
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        micro_batch_tokens=args.micro_batch_tokens,
        max_grad_norm=args.max_grad_norm,
        device=args.device,
        total_steps=steps_per_epoch * args.epochs,
        lora={"r": args.lora_r, "lora_alpha": 2 * args.lora_r} if args.lora_r > 0 else None,
    )
    learner = Learner(model, cfg, tokenizer=tokenizer, name="sft")
    out = Path(args.out)
    with MetricsLogger(out, tensorboard=not args.no_tensorboard) as log:

        def on_step(step: int, m: dict[str, float]) -> None:
            log.log(step, m)
            print(f"step {step}  epoch {int(m['epoch'])}  loss {m['loss']:.4f}  tok/s {m['tokens_per_s']:.0f}", flush=True)

        train_sft(learner, examples, epochs=args.epochs, batch_size=args.batch_size,
                  rng=random.Random(args.seed), on_step=on_step)
    final = learner.model.merge_and_unload() if learner.is_peft else learner.model
    final.save_pretrained(out)
    tokenizer.save_pretrained(out)
    print(f"saved to {out}")
    return 0
