"""A small Python syntax highlighter to HTML, built on the stdlib ``tokenize`` module.

Every piece of source text is HTML-escaped; tokens get ``<span class="tok-...">`` wrappers. Source
that does not tokenize (designer output is untrusted and often broken) falls back to escaped plain
text from the point of failure, so highlighting never raises and never drops characters.
"""

from __future__ import annotations

import builtins
import html
import io
import keyword
import token
import tokenize

_BUILTINS = frozenset(n for n in dir(builtins) if not n.startswith("_"))
_CONSTANTS = frozenset({"True", "False", "None"})


def _token_class(tok: tokenize.TokenInfo, prev: tokenize.TokenInfo | None) -> str | None:
    if tok.type == token.NAME:
        if tok.string in _CONSTANTS:
            return "const"
        if keyword.iskeyword(tok.string) or keyword.issoftkeyword(tok.string):
            return "kw"
        if prev is not None and prev.type == token.NAME and prev.string in ("def", "class"):
            return "def"
        if tok.string in _BUILTINS:
            return "builtin"
        return None
    if tok.type == token.STRING:
        return "str"
    # f-strings are split into several tokens on Python >= 3.12
    if tok.type in (getattr(token, "FSTRING_START", -1), getattr(token, "FSTRING_MIDDLE", -1),
                    getattr(token, "FSTRING_END", -1)):
        return "str"
    if tok.type == token.NUMBER:
        return "num"
    if tok.type == tokenize.COMMENT:
        return "com"
    if tok.type == token.OP:
        return "op"
    return None


def _offsets(source: str) -> list[int]:
    """Start offset of each 1-based line in ``source`` (index 0 unused)."""
    starts = [0, 0]
    for line in source.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    return starts


def highlight_python(source: str) -> str:
    """``source`` as HTML (no surrounding ``<pre>``): escaped, token spans added."""
    starts = _offsets(source)
    out: list[str] = []
    pos = 0
    prev: tokenize.TokenInfo | None = None
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type in (token.ENDMARKER,):
                break
            (sl, sc), (el, ec) = tok.start, tok.end
            if sl >= len(starts) or el >= len(starts):
                break
            start, end = starts[sl] + sc, starts[el] + ec
            if start < pos:  # DEDENT/NEWLINE tokens can overlap already-emitted text
                continue
            out.append(html.escape(source[pos:start]))
            text = source[start:end]
            cls = _token_class(tok, prev)
            if cls and text:
                out.append(f'<span class="tok-{cls}">{html.escape(text)}</span>')
            else:
                out.append(html.escape(text))
            pos = end
            if tok.type not in (token.NL, token.NEWLINE, token.INDENT, token.DEDENT, tokenize.COMMENT):
                prev = tok
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass  # unterminated string / bad dedent: the rest goes out unhighlighted
    out.append(html.escape(source[pos:]))
    return "".join(out)
