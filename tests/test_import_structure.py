"""The structure drawn from the code's imports: no module imports itself back through a circle, and
imports run one way between the packages (mx_envs <- mx_agents <- mx_train).

Every import counts, at module level or inside a function (a function-local import hides a circle
from the interpreter, not from the reader), except those under ``if TYPE_CHECKING:``, which never
run. ``from package import name`` is an import of the submodule ``package.name`` when there is one,
else of the package itself; ``importlib.import_module("literal")`` counts too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mx_envs", "mx_agents", "mx_train")  # lowest first: a package imports only those before it


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the three packages (a package is its __init__)."""
    out: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _nodes(node: ast.AST) -> Iterator[ast.AST]:
    """Every node under ``node`` except the bodies of ``if TYPE_CHECKING:`` blocks (their else runs)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.orelse:
                yield stmt
                yield from _nodes(stmt)
            continue
        yield child
        yield from _nodes(child)


def imports_of(name: str, path: Path, known: dict[str, Path]) -> dict[str, int]:
    """The project modules ``name`` imports, each with the line of its first import."""

    def resolve(dotted: str) -> str | None:  # the longest project module that ``dotted`` names
        while dotted and dotted not in known:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found: dict[str, int] = {}

    def add(target: str | None, line: int) -> None:
        if target is not None and target != name:
            found.setdefault(target, line)

    for node in _nodes(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(resolve(alias.name), node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                add(sub if sub in known else resolve(source), node.lineno)
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                   or (isinstance(node.func, ast.Name) and node.func.id in ("import_module", "__import__")))):
            add(resolve(node.args[0].value), node.lineno)
    return found


def import_graph() -> tuple[dict[str, dict[str, int]], dict[str, Path]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}, known


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One circle through each strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_circle(graph, set(c)) for c in components]


def _circle(graph: dict[str, dict[str, int]], component: set[str]) -> list[str]:
    """A shortest circle from the component's first module back to itself (breadth first)."""
    start = min(component)
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(graph[v]):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if w in component and w not in parent:
                    parent[w] = v
                    following.append(w)
        frontier = following
    raise AssertionError(f"no circle in the component {sorted(component)}")


def _show(circle: list[str], graph: dict[str, dict[str, int]], known: dict[str, Path]) -> str:
    steps = [f"{a} (line {graph[a][b]}) -> {b}" for a, b in zip(circle, circle[1:], strict=False)]
    return f"{known[circle[0]].relative_to(ROOT)}: " + "; ".join(steps)


def test_no_import_circle_between_modules():
    graph, known = import_graph()
    found = cycles(graph)
    assert not found, "import circles:\n" + "\n".join(_show(c, graph, known) for c in found)


def test_imports_run_one_way_between_packages():
    graph, known = import_graph()
    rank = {p: i for i, p in enumerate(PACKAGES)}
    upward = [
        f"{known[name].relative_to(ROOT)}:{line}: {name} imports {target}"
        for name, targets in sorted(graph.items())
        for target, line in sorted(targets.items())
        if rank[target.partition(".")[0]] > rank[name.partition(".")[0]]
    ]
    assert not upward, "a lower package imports a higher one:\n" + "\n".join(upward)


def test_the_checks_see_circles_and_upward_imports(tmp_path):
    """Positive control on a planted tree: a function-local circle and an upward import are found,
    an import under TYPE_CHECKING is not."""
    files = {
        "low/__init__.py": "",
        "low/a.py": "def f():\n    from low import b\n",
        "low/b.py": "from low.a import f\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from low import c\n",
        "low/c.py": "import low.b\n",
        "high/__init__.py": "",
        "high/x.py": "from low import a\n",
        "low/d.py": "import importlib\nimportlib.import_module('high.x')\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    known = {
        ".".join(p.relative_to(tmp_path).with_suffix("").parts).removesuffix(".__init__"): p
        for p in tmp_path.rglob("*.py")
    }
    graph = {name: imports_of(name, path, known) for name, path in known.items()}
    assert cycles(graph) == [["low.a", "low.b", "low.a"]]
    assert "low.c" not in graph["low.b"] and graph["low.c"] == {"low.b": 1}
    assert graph["high.x"] == {"low.a": 1} and graph["low.d"] == {"high.x": 2}
