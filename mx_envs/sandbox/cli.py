"""``mx sandbox exec FILE``: run a Python file in the sandbox and report the result."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("sandbox", help="run untrusted Python in the sandbox")
    sub = p.add_subparsers(dest="sandbox_command", metavar="SUBCOMMAND")
    ex = sub.add_parser("exec", help="run FILE in a fresh sandboxed process and print the result")
    ex.add_argument("file", metavar="FILE", help="Python source file to run")
    ex.add_argument("--stdin", metavar="FILE", help="file whose bytes become the program's stdin")
    ex.add_argument("--timeout", type=float, default=10.0, metavar="S", help="wall-clock limit (s)")
    ex.add_argument("--cpu", type=float, default=None, metavar="S", help="CPU-time limit (s; default: --timeout)")
    ex.add_argument("--memory-mb", type=int, default=1024, metavar="M", help="memory budget of the whole run (MiB)")
    ex.add_argument("--backend", choices=("process", "docker"), default="process")
    ex.add_argument("--image", default=None, help="container image (docker backend)")
    ex.add_argument("--no-preload", action="store_true", help="do not preload numpy/sympy in the pool")
    ex.add_argument(
        "--file-view",
        choices=("allowlist", "host"),
        default="allowlist",
        help="allowlist (default): the interpreter, stdlib and allowed packages only; host: the host's "
        "root read-only (an explicit widening: it shows the checkout and any data on the machine)",
    )
    ex.add_argument("--json", action="store_true", help="print one JSON object with the full result")
    ex.set_defaults(func=_exec)
    bi = sub.add_parser(
        "build-image",
        help="build the Docker backend's image locally from this interpreter (no registry)",
    )
    bi.add_argument("--tag", default=None, help="image tag (default mx-sandbox:latest)")
    bi.add_argument(
        "--packages",
        nargs="*",
        default=None,
        metavar="PKG",
        help="installed packages to include with their requirements (default: the allow-list world's "
        "packages that are installed: numpy scipy sympy mpmath networkx sortedcontainers)",
    )
    bi.add_argument("--force", action="store_true", help="rebuild even if the content hash is unchanged")
    bi.set_defaults(func=_build_image)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _build_image(args: argparse.Namespace) -> int:
    """Build (or reuse, by content hash) the Docker backend's image; print a JSON report."""
    import sys

    from mx_envs.sandbox.docker_image import DEFAULT_PACKAGES, build_image, main_json

    try:
        import docker

        client = docker.from_env(timeout=600)
        client.ping()
    except Exception as exc:  # noqa: BLE001 - SDK missing or no daemon: say which
        print(f"mx sandbox build-image: no Docker daemon or SDK (dockerd, docker extra): {exc}", file=sys.stderr)
        return 2
    packages = DEFAULT_PACKAGES if args.packages is None else tuple(args.packages)
    try:
        report = build_image(client, tag=args.tag, packages=packages, force=args.force)
    except (ValueError, RuntimeError) as exc:
        print(f"mx sandbox build-image: {exc}", file=sys.stderr)
        return 2
    print(main_json(report))
    return 0


def _exec(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from mx_envs.cli_output import emit_json
    from mx_envs.sandbox.api import Limits, Verdict

    try:
        source = Path(args.file).read_text(encoding="utf-8")
        stdin = Path(args.stdin).read_bytes() if args.stdin else b""
    except (OSError, UnicodeDecodeError) as exc:
        print(f"mx sandbox exec: cannot read input: {exc}", file=sys.stderr)
        return 2
    if args.timeout <= 0 or args.memory_mb <= 0:
        print("mx sandbox exec: --timeout and --memory-mb must be positive", file=sys.stderr)
        return 2
    limits = Limits(wall_s=args.timeout, cpu_s=args.cpu, memory_mb=args.memory_mb, file_view=args.file_view)
    if args.backend == "docker":
        from mx_envs.sandbox.docker_backend import DockerSandbox, DockerUnavailable

        try:
            sandbox = DockerSandbox(**({"image": args.image} if args.image else {}))
        except DockerUnavailable as exc:
            print(f"mx sandbox exec: {exc}", file=sys.stderr)
            return 2
    else:
        from mx_envs.sandbox.process import ProcessSandbox

        sandbox = ProcessSandbox(preload=() if args.no_preload else ("numpy", "sympy"), pool_size=1)
    try:
        result = sandbox.run(source, stdin=stdin, limits=limits)
    finally:
        sandbox.close()
    if args.json:
        emit_json(result.to_dict(), ensure_ascii=False)
    else:
        sys.stdout.write(result.stdout)
        sys.stderr.write(result.stderr)
        print(
            f"[sandbox] verdict={result.verdict.value} exit_code={result.exit_code} "
            f"wall={result.wall_s:.3f}s cpu={result.cpu_s:.3f}s peak={result.peak_memory_mb:.0f}MB"
            + (f" ({result.message})" if result.message else ""),
            file=sys.stderr,
        )
    if result.verdict is Verdict.SANDBOX_ERROR:
        return 3
    return 0 if result.ok else 1
