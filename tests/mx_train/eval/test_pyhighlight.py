import html
import re

import pytest

from mx_train.eval.pyhighlight import highlight_python

SOURCES = [
    'def forward(task):\n    a = Agent("x<y>")  # c&d\n    return a(task)\n',
    'x = """unterminated\n<script>alert(1)</script>',
    "if x:\n  y\n z\n",
    'f"{a}<b>"\n\n\n',
    "\tprint('tab')\r\nreturn\n",
    "",
    "def f():\n    return 'é' + \"\\u00e9\"\n",
]


@pytest.mark.parametrize("src", SOURCES)
def test_round_trips_every_character_and_escapes(src):
    out = highlight_python(src)
    assert "<script" not in out
    assert html.unescape(re.sub(r"<[^>]+>", "", out)) == src


def test_token_classes():
    out = highlight_python("def solve(n):\n    return len([1]) + None  # done\n")
    assert '<span class="tok-kw">def</span>' in out
    assert '<span class="tok-def">solve</span>' in out
    assert '<span class="tok-builtin">len</span>' in out
    assert '<span class="tok-const">None</span>' in out
    assert '<span class="tok-com"># done</span>' in out
    assert '<span class="tok-num">1</span>' in out
