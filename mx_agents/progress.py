"""Progress bars (tqdm, on stderr): one way to make them, and a caller's bar shared by several calls.

Every long phase (teacher episodes, cold start, RL steps, held-out conditions, rollouts) shows a bar
with its rate and ETA; they are all made here so they look and behave alike.
"""

from __future__ import annotations

from typing import Any


def progress_bar(total: int, desc: str, unit: str = "ep", initial: int = 0) -> Any:
    """A tqdm bar of ``total`` items (``initial`` already done: a resumed run)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True)


class OuterBar:
    """A caller's progress bar that spans several calls: counted into, never closed here."""

    def __init__(self, bar: Any) -> None:
        self._bar = bar

    def update(self, n: int = 1) -> None:
        self._bar.update(n)

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass  # concurrent callers would overwrite each other's postfix

    def close(self) -> None:
        pass
