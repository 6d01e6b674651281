"""Classify a designer's MAS script into the paper's structure families.

The families are ``single``, ``reflection``, ``ensemble``, ``debate`` and ``other``; scripts that do
not parse (or are absent) are ``invalid``. Classification is static: it walks the script's AST and
collects features, then applies ordered rules (first match wins):

0. A composition helper of :mod:`mx_envs.mas.lib` called by name decides directly: ``debate`` ->
   debate; ``ensemble`` or ``majority_vote`` -> ensemble; ``reflect`` -> reflection (checked in
   that order, so a debate whose rounds are voted on is a debate). ``pipeline``/``route`` alone fall
   through to the rules below (usually **other**).
1. **debate**: at least two agents, a loop that contains LLM calls, and either debate vocabulary
   (``debate``, ``round``, ``argue``, ``opponent``, ``rebut``) in identifiers or one-word strings
   (agent names, modes; prompts' prose is ignored), or two or more agents called in the same loop
   with no critique vocabulary (agents taking turns).
2. **ensemble**: at least two solver agents (several construction sites, or one inside a loop or
   comprehension) whose answers are aggregated (``vote``, ``majority``, ``judge``, ``aggregate``,
   ``select``, ``Counter``/``most_common``), or any agent built in a loop/comprehension and called.
3. **reflection**: critique vocabulary (``critic``, ``reflect``, ``feedback``, ``refine``, ``review``,
   ``verify``, ``improve``, ``revise``) together with more than one LLM call (a loop around calls or
   several call sites); or a single agent called in a loop (iterated self-refinement).
4. **single**: one agent, constructed and called outside any loop (tool use and a follow-up
   question to the same agent do not change this).
5. **other**: anything else (pipelines of distinct roles, routers, ...).

An "agent construction" is a call whose callee name contains ``agent`` (``Agent(...)``,
``mas.agent(...)``, ``make_agent(...)``); an "LLM call" is a call on a name bound from such a
construction (``solver(...)``, ``solver.ask(...)``), or on an element of a list of agents. When the
runtime list of created agents is known, it overrides the static agent count (a helper function
that builds agents hides them from a purely static count).
"""

from __future__ import annotations

import ast
import re
from dataclasses import asdict, dataclass, field

STRUCTURES: tuple[str, ...] = ("single", "reflection", "ensemble", "debate", "other")
INVALID = "invalid"

_DEBATE = re.compile(r"debat|\bround|rounds?_|argu|opponent|rebut", re.IGNORECASE)
_AGGREGATE = re.compile(r"vote|voting|majority|judge|aggregat|select|most_common|counter|consensus", re.I)
_HELPERS = ("debate", "ensemble", "majority_vote", "reflect", "pipeline", "route")
_CRITIQUE = re.compile(r"critic|critique|reflect|feedback|refine|review|verif|improve|revis|check", re.I)


@dataclass
class DesignFeatures:
    """What the classifier saw in a script."""

    agent_sites: int = 0  # calls constructing agents
    agents_in_loop: bool = False  # an agent constructed inside a loop or comprehension
    call_sites: int = 0  # calls on agent-bound names
    calls_in_loop: bool = False  # an agent call inside a loop or comprehension
    agents_per_loop: int = 0  # most distinct agent variables called inside one loop
    runtime_agents: int | None = None  # sub-agents actually created, when known
    helpers: list[str] = field(default_factory=list)  # mas composition helpers called
    vocabulary: list[str] = field(default_factory=list)  # which keyword families appear

    @property
    def n_agents(self) -> int:
        if self.runtime_agents is not None:
            return self.runtime_agents
        return self.agent_sites + (1 if self.agents_in_loop else 0)


@dataclass
class DesignStructure:
    label: str  # one of STRUCTURES or INVALID
    features: DesignFeatures

    def to_dict(self) -> dict:
        d = asdict(self)
        d["features"]["n_agents"] = self.features.n_agents
        return d


def _callee_name(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def _root_name(node: ast.AST) -> str | None:
    """The variable at the base of ``x``, ``x.attr``, ``x[i]`` or ``x.attr[i]``."""
    while isinstance(node, ast.Attribute | ast.Subscript):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _is_agent_construction(call: ast.Call) -> bool:
    return "agent" in _callee_name(call.func).lower()


class _Visitor(ast.NodeVisitor):
    def __init__(self) -> None:
        self.features = DesignFeatures()
        self.agent_names: set[str] = set()
        self.loop_depth = 0
        self.words: list[str] = []

    # Loops and comprehensions both mean "repeated", which is what the rules care about.
    def _loop(self, node: ast.AST) -> None:
        self.loop_depth += 1
        self.generic_visit(node)
        self.loop_depth -= 1

    visit_For = visit_While = visit_AsyncFor = _loop
    visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = _loop

    def visit_Assign(self, node: ast.Assign) -> None:
        if self._contains_agent_construction(node.value):
            for target in node.targets:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name):
                        self.agent_names.add(name.id)
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None and self._contains_agent_construction(node.value):
            root = _root_name(node.target)
            if root:
                self.agent_names.add(root)
        self.generic_visit(node)

    @staticmethod
    def _contains_agent_construction(node: ast.AST) -> bool:
        return any(isinstance(n, ast.Call) and _is_agent_construction(n) for n in ast.walk(node))

    def visit_Call(self, node: ast.Call) -> None:
        if _is_agent_construction(node):
            self.features.agent_sites += 1
            if self.loop_depth:
                self.features.agents_in_loop = True
        callee = _callee_name(node.func)
        if callee in _HELPERS and callee not in self.features.helpers:
            self.features.helpers.append(callee)
        self.words.append(callee)
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        self.words.append(node.id)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        self.words.append(node.attr)
        self.generic_visit(node)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self.words.append(node.name)
        self.generic_visit(node)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Constant(self, node: ast.Constant) -> None:
        # Short one-word strings are names and modes (`Agent("critic")`, `aggregate="vote"`); long
        # prose is a prompt, whose wording ("check your answer") says nothing about the structure.
        if isinstance(node.value, str) and len(node.value) <= 40 and not any(c.isspace() for c in node.value):
            self.words.append(node.value)


class _CallCounter(ast.NodeVisitor):
    """Second pass: count calls on agent-bound names (known only after the first pass)."""

    def __init__(self, agent_names: set[str], features: DesignFeatures) -> None:
        self.agent_names = agent_names
        self.features = features
        self.loop_depth = 0
        self.loop_callees: list[set[str]] = []  # agents called in each open loop

    def _loop(self, node: ast.AST) -> None:
        self.loop_depth += 1
        self.loop_callees.append(set())
        self.generic_visit(node)
        called = self.loop_callees.pop()
        if self.loop_callees:
            self.loop_callees[-1] |= called
        self.features.agents_per_loop = max(self.features.agents_per_loop, len(called))
        self.loop_depth -= 1

    visit_While = visit_AsyncFor = visit_DictComp = _loop

    def visit_Call(self, node: ast.Call) -> None:
        root = _root_name(node.func)
        if root is not None and root in self.agent_names:
            self.features.call_sites += 1
            if self.loop_depth:
                self.features.calls_in_loop = True
                self.loop_callees[-1].add(root)
        self.generic_visit(node)

    def visit_For(self, node: ast.For) -> None:  # `for a in agents: a(...)` binds an agent name
        root = _root_name(node.iter)
        if root in self.agent_names:
            for name in ast.walk(node.target):
                if isinstance(name, ast.Name):
                    self.agent_names.add(name.id)
        self._loop(node)

    def visit_comprehension_targets(self, node: ast.ListComp | ast.GeneratorExp | ast.SetComp) -> None:
        for gen in node.generators:
            if _root_name(gen.iter) in self.agent_names:
                for name in ast.walk(gen.target):
                    if isinstance(name, ast.Name):
                        self.agent_names.add(name.id)
        self._loop(node)

    visit_ListComp = visit_SetComp = visit_GeneratorExp = visit_comprehension_targets


def classify_design(script: str | None, runtime_agents: list[str] | None = None) -> DesignStructure:
    """Structure family of ``script`` (see the module docstring for the rules)."""
    if not script or not script.strip():
        return DesignStructure(INVALID, DesignFeatures())
    try:
        tree = ast.parse(script)
    except (SyntaxError, ValueError):
        return DesignStructure(INVALID, DesignFeatures())
    visitor = _Visitor()
    visitor.visit(tree)
    feats = visitor.features
    _CallCounter(visitor.agent_names, feats).visit(tree)
    if runtime_agents is not None:
        feats.runtime_agents = len(runtime_agents)
    text = " ".join(visitor.words)
    vocab = {
        "debate": bool(_DEBATE.search(text)),
        "aggregate": bool(_AGGREGATE.search(text)),
        "critique": bool(_CRITIQUE.search(text)),
    }
    feats.vocabulary = sorted(k for k, v in vocab.items() if v)
    return DesignStructure(_apply_rules(feats, vocab), feats)


def _apply_rules(f: DesignFeatures, vocab: dict[str, bool]) -> str:
    if "debate" in f.helpers:
        return "debate"
    if "ensemble" in f.helpers or "majority_vote" in f.helpers:
        return "ensemble"
    if "reflect" in f.helpers:
        return "reflection"
    n = f.n_agents
    several_calls = f.calls_in_loop or f.call_sites >= 2
    # Several agents taking turns inside one loop is a debate unless they are named as critics.
    if n >= 2 and f.calls_in_loop and (vocab["debate"] or (f.agents_per_loop >= 2 and not vocab["critique"])):
        return "debate"
    if (n >= 2 and vocab["aggregate"]) or (f.agents_in_loop and f.call_sites >= 1):
        return "ensemble"
    if (vocab["critique"] and several_calls) or (n == 1 and f.calls_in_loop):
        return "reflection"
    if n == 1 and not f.agents_in_loop:
        return "single"
    return "other"


_TOOLS = re.compile(r"tools\s*=\s*[\(\[]\s*['\"]")


def design_family(script: str | None) -> str:
    """The structure label, with ``+tools`` when an agent of the script is given tools (a single
    agent that runs Python and one that answers from memory are different designs for a task that
    needs exact arithmetic)."""
    label = classify_design(script).label
    if label != INVALID and script and _TOOLS.search(script):
        return f"{label}+tools"
    return label
