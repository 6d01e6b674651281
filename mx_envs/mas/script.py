"""Finding a MAS script in a designer's text and checking it before anything runs."""

from __future__ import annotations

import ast
import re
import warnings

from mx_envs.mas.protocol import TerminationReason

ENTRY = "forward"

_FENCE_RE = re.compile(
    r"^[ \t]*```[ \t]*([A-Za-z0-9_+.-]*)[^\n]*\n(.*?)(?:^[ \t]*```[ \t]*$|\Z)", re.S | re.M
)
_PYTHON_TAGS = {"python", "py", "python3"}


def _defines_entry(source: str) -> bool:
    return re.search(rf"^def\s+{ENTRY}\s*\(", source, re.M) is not None


def extract_script(design_text: str) -> str | None:
    """The script in a designer's reply, or ``None`` if there is none.

    Fenced blocks tagged python (or untagged, when no block is tagged python): the last one
    that defines ``forward`` at top level, else the last one. An unclosed final fence counts
    (a reply cut at the token limit), so that it fails as a syntax error rather than as "no
    code". Without fences the whole text counts if it parses and defines ``forward``.
    """
    if not isinstance(design_text, str) or not design_text.strip():
        return None
    blocks = [(m.group(1).lower(), m.group(2)) for m in _FENCE_RE.finditer(design_text)]
    candidates = [b for tag, b in blocks if tag in _PYTHON_TAGS] or [b for tag, b in blocks if not tag]
    if candidates:
        with_entry = [b for b in candidates if _defines_entry(b)]
        return (with_entry or candidates)[-1]
    try:
        tree = ast.parse(design_text)
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError):
        return None
    if any(isinstance(n, ast.FunctionDef) and n.name == ENTRY for n in tree.body):
        return design_text
    return None


def check_script(script: str) -> tuple[TerminationReason, str] | None:
    """``None`` when ``script`` compiles and defines a usable ``forward(task)``; else why not."""
    try:
        # A policy's script is not ours to lint: its SyntaxWarnings ("is not" with a literal...) would
        # land on the host's stderr once per episode.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)
            tree = ast.parse(script, filename="<design>")
            compile(tree, "<design>", "exec")
    except SyntaxError as exc:
        where = f"line {exc.lineno}" + (f", column {exc.offset}" if exc.offset else "")
        text = f"\n    {exc.text.rstrip()}" if exc.text else ""
        return TerminationReason.SYNTAX_ERROR, f"{type(exc).__name__}: {exc.msg} ({where}){text}"
    except ValueError as exc:  # e.g. null bytes in the source
        return TerminationReason.SYNTAX_ERROR, f"invalid source: {exc}"
    except (RecursionError, MemoryError, OverflowError) as exc:
        # Nesting the parser or compiler cannot hold ("-" * 1000 + "1", 200 nested brackets) is a
        # script that cannot run, the same verdict as a syntax error.
        return TerminationReason.SYNTAX_ERROR, f"{type(exc).__name__}: the script is nested too deeply to compile"
    entries = [n for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == ENTRY]
    if not entries:
        return TerminationReason.MISSING_ENTRY, f"the script defines no top-level `def {ENTRY}(task):`"
    fn = entries[-1]
    if isinstance(fn, ast.AsyncFunctionDef):
        return TerminationReason.MISSING_ENTRY, f"`{ENTRY}` must be a plain `def`, not `async def`"
    args = fn.args
    positional = args.posonlyargs + args.args
    if not positional and args.vararg is None:
        return TerminationReason.MISSING_ENTRY, f"`{ENTRY}` must take the task as its first argument"
    required = len(positional) - len(args.defaults)
    kw_required = [a.arg for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is None]
    if required > 1 or kw_required:
        return (
            TerminationReason.MISSING_ENTRY,
            f"`{ENTRY}` is called as {ENTRY}(task): its other parameters need default values",
        )
    return None
