"""Render an :class:`~mx_train.eval.trace.EpisodeTrace` as one self-contained HTML page.

The page has no scripts and no external assets (the machines are offline): inline CSS, an inline
SVG sequence diagram, ``<details>`` for folding. All trace text is untrusted (LLM output, task text,
tool output) and is HTML-escaped everywhere; a Content-Security-Policy that forbids scripts is set
as a second line of defence.
"""

from __future__ import annotations

import html
from collections.abc import Iterable

from mx_train.eval.pyhighlight import highlight_python
from mx_train.eval.trace import CallRecord, EpisodeTrace, ToolRecord

_CSS = """
:root { --fg:#1d2330; --muted:#5b6472; --line:#d8dde6; --bg:#f6f7f9; --ok:#17803d; --bad:#b42318;
        --acc:#2f5fb3; }
* { box-sizing: border-box; }
body { font: 14px/1.45 -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: var(--fg);
       margin: 0; background: #fff; }
main { max-width: 1180px; margin: 0 auto; padding: 20px 24px 60px; }
h1 { font-size: 20px; margin: 0 0 6px; word-break: break-all; }
h2 { font-size: 16px; margin: 28px 0 8px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 14px; margin: 16px 0 6px; }
.meta { color: var(--muted); font-size: 13px; }
.meta span { margin-right: 14px; white-space: nowrap; }
.badge { display: inline-block; padding: 2px 9px; border-radius: 10px; font-weight: 600; font-size: 12px;
         color: #fff; vertical-align: middle; margin-left: 6px; }
.badge.ok { background: var(--ok); } .badge.bad { background: var(--bad); }
.badge.info { background: var(--acc); }
pre { background: var(--bg); border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px;
      margin: 4px 0; overflow-x: auto; white-space: pre-wrap; word-break: break-word;
      font: 12.5px/1.45 "DejaVu Sans Mono", Menlo, Consolas, monospace; }
pre.code { white-space: pre; counter-reset: ln; }
pre.code .ln { display: inline-block; width: 3em; color: #9aa3b2; user-select: none; text-align: right;
               margin-right: 12px; }
.tok-kw { color: #8a2be2; font-weight: 600; } .tok-str { color: #067d17; } .tok-num { color: #1750eb; }
.tok-com { color: #8c8c8c; font-style: italic; } .tok-def { color: #00627a; font-weight: 600; }
.tok-builtin { color: #0b6e99; } .tok-const { color: #c2410c; font-weight: 600; } .tok-op { color: #555; }
table.kv { border-collapse: collapse; margin: 6px 0; }
table.kv td { padding: 3px 12px 3px 0; vertical-align: top; }
table.kv td:first-child { color: var(--muted); white-space: nowrap; }
.msg { border-left: 3px solid var(--line); padding: 2px 0 2px 10px; margin: 6px 0; }
.msg .role { font-size: 11px; text-transform: uppercase; letter-spacing: .04em; color: var(--muted);
             font-weight: 600; }
.msg.system { border-color: #c9b458; } .msg.user { border-color: #7a8aa6; }
.msg.assistant { border-color: var(--acc); }
.call { border: 1px solid var(--line); border-radius: 8px; padding: 8px 12px; margin: 10px 0; }
.call > .head { font-weight: 600; }
.call > .head .meta { font-weight: 400; margin-left: 8px; }
details > summary { cursor: pointer; color: var(--acc); margin: 4px 0; }
.tool { border: 1px dashed #b9a36a; border-radius: 8px; padding: 8px 12px; margin: 10px 0;
        background: #fffdf5; }
.diagram { overflow-x: auto; border: 1px solid var(--line); border-radius: 8px; padding: 8px;
           background: #fcfcfd; }
.error { color: var(--bad); }
.hack { border: 2px solid var(--bad); border-radius: 8px; padding: 8px 14px; margin: 12px 0;
        background: #fff4f2; }
.hack ul { margin: 4px 0 2px; padding-left: 20px; }
.tool.origin { border: 2px solid var(--bad); }
"""

_LANE_W = 170
_ROW_H = 34
_TOP = 56


def _e(text: object) -> str:
    return html.escape("" if text is None else str(text), quote=True)


def _pre(text: str | None, cls: str = "") -> str:
    c = f' class="{cls}"' if cls else ""
    return f"<pre{c}>{_e(text or '')}</pre>"


def _code_block(source: str) -> str:
    lines = highlight_python(source).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    numbered = "\n".join(f'<span class="ln">{i}</span>{line}' for i, line in enumerate(lines, 1))
    return f'<pre class="code">{numbered}</pre>'


def _lanes(trace: EpisodeTrace) -> list[str]:
    """Diagram columns: the script host, then sub-agents in creation/first-call order."""
    names: list[str] = []
    for name in [*trace.agents, *(c.agent for c in trace.calls if c.role != "designer"),
                 *(t.agent for t in trace.tool_calls)]:
        if name and name not in names:
            names.append(name)
    return ["script", *names]


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "\u2026"


def _events(trace: EpisodeTrace) -> list[tuple[str, CallRecord | ToolRecord]]:
    """Executor calls and tool runs in episode order (tools placed after the call they followed)."""
    execs = [c for c in trace.calls if c.role != "designer"]
    placed: dict[int | None, list[ToolRecord]] = {}
    for t in trace.tool_calls:
        placed.setdefault(t.after_call, []).append(t)
    events: list[tuple[str, CallRecord | ToolRecord]] = [("tool", t) for t in placed.pop(-1, [])]
    for c in execs:
        events.append(("call", c))
        events.extend(("tool", t) for t in placed.pop(c.index, []))
    for rest in placed.values():  # unknown position: after everything
        events.extend(("tool", t) for t in rest)
    return events


def render_sequence_svg(trace: EpisodeTrace) -> str:
    """An inline SVG sequence diagram: lifelines per agent, one request/reply pair per LLM call.

    A designer lane comes first when the trace has a designer turn: its arrow hands the script over.
    """
    designer = next((c for c in trace.calls if c.role == "designer"), None)
    lanes = (["designer"] if designer is not None else []) + _lanes(trace)
    x_of = {name: _LANE_W // 2 + i * _LANE_W for i, name in enumerate(lanes)}
    events = _events(trace)
    width = max(len(lanes) * _LANE_W, 360)
    rows = sum(1 if kind == "tool" else 2 for kind, _ in events) + (1 if designer is not None else 0)
    height = _TOP + max(rows, 1) * _ROW_H + 20
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="DejaVu Sans, sans-serif" font-size="12" '
        'role="img" aria-label="sequence of agent calls">',
        # A halo behind labels keeps them readable where they cross a lifeline.
        "<style>text{paint-order:stroke;stroke:#fcfcfd;stroke-width:4px;stroke-linejoin:round}</style>",
        '<defs><marker id="arr" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#475467"/></marker></defs>',
    ]
    for name in lanes:
        x = x_of[name]
        fill = {"script": "#e8eefb", "designer": "#f1ecfd"}.get(name, "#eef6ee")
        parts.append(
            f'<rect x="{x - 72}" y="8" width="144" height="28" rx="6" fill="{fill}" stroke="#98a2b3"/>'
            f'<text x="{x}" y="27" text-anchor="middle" font-weight="600">{_e(_clip(name, 20))}'
            f"<title>{_e(name)}</title></text>"
            f'<line x1="{x}" y1="36" x2="{x}" y2="{height - 10}" stroke="#c0c7d2" stroke-dasharray="4 4"/>'
        )
    y = _TOP
    if designer is not None:
        dx, sx = x_of["designer"], x_of["script"]
        label = "fixed design" if designer.source == "fixed" else f"writes script ({designer.response_tokens} tok)"
        parts.append(
            f'<line x1="{dx}" y1="{y}" x2="{sx - 4}" y2="{y}" stroke="#7a5af8" marker-end="url(#arr)"/>'
            f'<text x="{(dx + sx) / 2}" y="{y - 5}" text-anchor="middle" fill="#7a5af8">{_e(label)}</text>'
        )
        y += _ROW_H
    if not events:
        parts.append(f'<text x="10" y="{y + 10}" fill="#5b6472">no sub-agent calls</text>')
    for kind, ev in events:
        ax = x_of.get(ev.agent, x_of["script"])
        sx = x_of["script"]
        if kind == "call":
            assert isinstance(ev, CallRecord)
            llm = ev.source == "llm"
            label = f"#{ev.index} ask" + (f" ({ev.prompt_tokens} tok)" if llm else "")
            parts.append(
                f'<line x1="{sx}" y1="{y}" x2="{ax - 4}" y2="{y}" stroke="#475467" marker-end="url(#arr)"/>'
                f'<text x="{(sx + ax) / 2}" y="{y - 5}" text-anchor="middle">{_e(label)}</text>'
            )
            y += _ROW_H
            reply = (f"reply {ev.response_tokens} tok" if llm else f"reply ({ev.source or 'no model'})") + (
                " (cut)" if ev.finish_reason == "length" else ""
            )
            parts.append(
                f'<line x1="{ax}" y1="{y}" x2="{sx + 4}" y2="{y}" stroke="#2f5fb3" stroke-dasharray="5 3" '
                f'marker-end="url(#arr)"/>'
                f'<text x="{(sx + ax) / 2}" y="{y - 5}" text-anchor="middle" fill="#2f5fb3">{_e(reply)}'
                f"<title>{_e(_clip(ev.reply, 300))}</title></text>"
            )
        else:
            assert isinstance(ev, ToolRecord)
            color = "#17803d" if ev.verdict in ("ok", "success", "passed") else "#b54708"
            parts.append(
                f'<rect x="{ax - 66}" y="{y - 14}" width="132" height="22" rx="4" fill="#fffbeb" '
                f'stroke="{color}"/><text x="{ax}" y="{y + 1}" text-anchor="middle" fill="{color}">'
                f"{_e(_clip(f'{ev.tool}: {ev.verdict}', 22))}</text>"
            )
        y += _ROW_H
    parts.append("</svg>")
    return "".join(parts)


def _messages_html(messages: Iterable[dict[str, str]]) -> str:
    out = []
    for m in messages:
        role = str(m.get("role", "?"))
        cls = role if role in ("system", "user", "assistant") else ""
        out.append(f'<div class="msg {cls}"><div class="role">{_e(role)}</div>{_pre(m.get("content", ""))}</div>')
    return "".join(out)


def _common_prefix(a: list[dict[str, str]], b: list[dict[str, str]]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x.get("role") != y.get("role") or x.get("content") != y.get("content"):
            break
        n += 1
    return n


def _call_html(call: CallRecord, seen: int) -> str:
    """One call: only the messages after the first ``seen`` (already shown), then the reply."""
    new = call.messages[seen:]
    earlier = len(call.messages) - len(new)
    head = (
        f'<div class="head">#{call.index} {_e(call.agent)}<span class="meta">'
        + (f"{call.prompt_tokens} prompt tok, {call.response_tokens} reply tok" if call.source == "llm"
           else f"answered by: {_e(call.source or '?')}")
        + f"{', finish: ' + _e(call.finish_reason) if call.finish_reason else ''}</span></div>"
    )
    note = f'<div class="meta">({earlier} earlier message(s) of this conversation above)</div>' if earlier else ""
    reply = f'<div class="msg assistant"><div class="role">reply</div>{_pre(call.reply)}</div>'
    return f'<div class="call">{head}{note}{_messages_html(new)}{reply}</div>'


def _tool_html(t: ToolRecord, origin: bool = False) -> str:
    mark = ' <span class="badge bad">the answer first appeared here</span>' if origin else ""
    parts = [
        f'<div class="tool{" origin" if origin else ""}"><div><b>{_e(t.tool)}</b> by {_e(t.agent)} '
        f'<span class="badge {"ok" if t.verdict in ("ok", "success", "passed") else "bad"}">{_e(t.verdict)}</span>'
        + (f' <span class="meta">after call #{t.after_call}</span>' if t.after_call is not None else "")
        + mark + "</div>",
        _code_block(t.code) if t.code else "",
    ]
    if t.stdout:
        parts.append(f'<div class="meta">stdout</div>{_pre(t.stdout)}')
    if t.stderr:
        parts.append(f'<div class="meta">stderr</div>{_pre(t.stderr)}')
    parts.append("</div>")
    return "".join(parts)


def _conversations_html(trace: EpisodeTrace) -> str:
    execs = [c for c in trace.calls if c.role != "designer"]
    k = trace.integrity.get("answer_tool_run") if trace.integrity else None
    origin = trace.tool_calls[k] if isinstance(k, int) and 0 <= k < len(trace.tool_calls) else None
    if not execs:
        # A script can run tools with no LLM call in between: those runs are still shown.
        return '<p class="meta">No sub-agent was called.</p>' + "".join(
            _tool_html(t, t is origin) for t in trace.tool_calls)
    out = []
    for name in _lanes(trace)[1:]:
        calls = [c for c in execs if c.agent == name]
        tools = [t for t in trace.tool_calls if t.agent == name]
        if not calls and not tools:
            continue
        out.append(f'<h3>{_e(name)} <span class="meta">{len(calls)} call(s), {len(tools)} tool run(s)</span></h3>')
        before: list[dict[str, str]] = []
        for c in calls:
            out.append(_call_html(c, _common_prefix(before, c.messages)))
            # The next call of this agent usually repeats this chat plus the reply: show only what is new.
            before = [*c.messages, {"role": "assistant", "content": c.reply}]
            out.extend(_tool_html(t, t is origin) for t in tools if t.after_call == c.index)
        out.extend(_tool_html(t, t is origin) for t in tools if t.after_call not in {c.index for c in calls})
    return "".join(out)


_ORIGIN_WORDS = {
    "agent": "an executor reply",
    "tool": "a tool run's output",
    "script": "the design script (no reply or tool output held it first)",
    "prompt": "the task text",
}


def _integrity_html(trace: EpisodeTrace) -> tuple[str, str]:
    """(banner of the reward-hack monitor's flags, or ""; answer-origin table row, or "")."""
    from mx_train.hack_monitor import FLAGS, episode_flags

    rec = trace.integrity or {}
    if not rec:
        return "", ""
    origin = rec.get("answer_origin")
    row = ""
    if origin:
        where = _ORIGIN_WORDS.get(str(origin), str(origin))
        if origin == "tool" and rec.get("answer_tool_run") is not None:
            where += f" (tool run {int(rec['answer_tool_run']) + 1} of {len(trace.tool_calls)})"
        row = f"<tr><td>answer first appeared in</td><td>{_e(where)}</td></tr>"
    flags = episode_flags(rec)
    if not flags:
        return "", row
    items = "".join(f"<li><b>{_e(f)}</b>: {_e(FLAGS[f])}</li>" for f in flags)
    verdicts = ", ".join(str(v) for v in rec.get("tool_verdicts") or []) or "none"
    banner = (
        f'<div class="hack"><b>Reward-hack monitor: {len(flags)} flag(s)</b><ul>{items}</ul>'
        f'<div class="meta">executor LLM calls: {_e(rec.get("executor_llm_calls"))}; script process: '
        f'{_e(rec.get("script_verdict"))}; tool runs: {_e(verdicts)}</div></div>'
    )
    return banner, row


def render_trace_html(trace: EpisodeTrace) -> str:
    """The whole page for ``trace`` (a complete HTML document as a string)."""
    ok = trace.correct
    verdict = f'<span class="badge {"ok" if ok else "bad"}">{"correct" if ok else "incorrect"}</span>'
    structure = trace.structure.get("label", "") if trace.structure else ""
    designer = [c for c in trace.calls if c.role == "designer"]
    meta = " ".join(
        f"<span>{_e(k)}: <b>{_e(v)}</b></span>"
        for k, v in [
            ("env", trace.env_id), ("sample", trace.sample), ("seed", trace.seed),
            ("policy", trace.policy), ("executor", trace.executor or "-"),
            ("LLM calls", trace.llm_calls),
            ("tokens", f"{trace.prompt_tokens} prompt / {trace.response_tokens} reply"),
            ("wall", f"{trace.wall_s:.1f} s"),
        ]
    )
    feats = trace.structure.get("features", {}) if trace.structure else {}
    feat_rows = " ".join(f"<span>{_e(k)}: <b>{_e(v)}</b></span>" for k, v in feats.items())
    script_html = (
        _code_block(trace.design_script)
        if trace.design_script
        else '<p class="error">No script could be extracted from the designer\'s output.</p>'
    )
    designer_html = ""
    if designer:
        d = designer[0]
        who = "fixed library design" if d.source == "fixed" else f"{d.prompt_tokens} prompt tok, {d.response_tokens} reply tok"
        designer_html = (
            f"<details><summary>Designer prompt and raw output ({_e(who)})</summary>{_messages_html(d.messages)}"
            f'<div class="msg assistant"><div class="role">designer output</div>{_pre(d.reply)}</div></details>'
        )
    elif trace.design_text:
        designer_html = f"<details><summary>Designer raw output</summary>{_pre(trace.design_text)}</details>"
    error_html = f'<tr><td>error</td><td>{_pre(trace.error)}</td></tr>' if trace.error else ""
    hack_html, origin_row = _integrity_html(trace)
    body = f"""
<main>
<h1>{_e(trace.task_id)} {verdict}<span class="badge info">{_e(structure or "?")}</span></h1>
<div class="meta">{meta}</div>
{hack_html}

<h2>Task</h2>
{_pre(trace.task_prompt)}

<h2>Design <span class="meta">structure: {_e(structure or "?")}</span></h2>
{script_html}
<div class="meta">{feat_rows}</div>
{designer_html}

<h2>Agents and call order</h2>
<div class="diagram">{render_sequence_svg(trace)}</div>

<h2>Conversations</h2>
{_conversations_html(trace)}

<h2>Answer and verdict</h2>
<table class="kv">
<tr><td>answer</td><td>{_pre(trace.answer if trace.answer is not None else "(none)")}</td></tr>
<tr><td>reference</td><td>{_pre(trace.reference if trace.reference is not None else "(tests)")}</td></tr>
<tr><td>verdict</td><td>{verdict} reward {trace.reward:g}</td></tr>
{origin_row}
<tr><td>termination</td><td>{_e(trace.termination_reason)}
 (design {"valid" if trace.design_valid else "invalid"})</td></tr>
{error_html}
</table>
</main>"""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; "
        "img-src data:\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>MetaAgentX trace: {_e(trace.task_id)}</title><style>{_CSS}</style></head>"
        f"<body>{body}</body></html>\n"
    )
