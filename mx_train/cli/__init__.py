"""The ``mx`` command: one entry point (:func:`main`, the console script), subcommands contributed
by each package.

Each module in :data:`COMMAND_MODULES` defines ``register(subparsers)``, which adds its
subcommand(s) with ``set_defaults(func=...)``. Those modules import only argparse at module level,
so ``mx --help`` stays fast (and works without torch); the handlers import what they need. The
training package's commands live in this package, one module each, and stay thin (parse the
arguments, call the library, print): ``train`` (:mod:`.train`), ``sft``, ``sft-data``, ``plot``,
``eval``/``table``/``trace`` (:mod:`.eval`), ``heldout``, ``bench``.
"""

from __future__ import annotations

import argparse
import importlib
import logging

# Order = order in `mx --help`.
COMMAND_MODULES: list[str] = [
    "mx_envs.sandbox.cli",
    "mx_envs.tasks.cli",
    "mx_envs.envs.cli",
    "mx_agents.cli",
    "mx_train.cli.train",
    "mx_train.cli.sft",
    "mx_train.cli.sft_data",
    "mx_train.cli.plot",
    "mx_train.cli.eval",
    "mx_train.cli.heldout",
    "mx_train.cli.bench",
]


# The extra a command needs as a whole: a base install (no torch) names it when a package is missing.
COMMAND_EXTRAS: dict[str, str] = {"train": "train", "sft": "train"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mx",
        description=(
            "MetaAgentX: environments, agents and RL training for LLMs that design and execute "
            "their own multi-agent systems. Run `mx COMMAND --help` for a command's options."
        ),
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # a command module not built yet: leave it out of the menu
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Before anything imports torch: OpenMP workers that do not spin-wait (mx_agents.threads).
    from mx_agents.threads import configure_cpu_threads

    configure_cpu_threads()
    # Before the episode threads start: two malloc arenas, not 8 per core (mx_train.memory_watch).
    from mx_train.memory_watch import limit_malloc_arenas

    limit_malloc_arenas()
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    # A user mistake (ConfigError, unknown env id, missing file or data...) is one line and exit 2;
    # -vv shows the traceback instead. Anything else is a bug and keeps its traceback.
    from mx_envs.cli_output import json_only_stdout
    from mx_envs.errors import run_cli

    prog = f"mx {args.command}" if getattr(args, "command", None) else "mx"
    # `--json`: the JSON document alone on stdout, everything else (vLLM's logs...) on stderr.
    with json_only_stdout(getattr(args, "json", None) is True):
        return run_cli(prog, lambda: args.func(args), traceback=args.verbose >= 2,
                       extra=COMMAND_EXTRAS.get(getattr(args, "command", None) or ""))
