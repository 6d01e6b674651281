"""Batch the generation requests of concurrent callers (one thread per episode) without lock-step rounds.

Why: in a lock-step rollout every episode waits for the slowest turn of its round, and the engine
idles while envs step. With one thread per episode, each episode submits its next LLM turn as soon as
its sandbox asks for it; these classes serve whatever is pending at that moment:

- :class:`DynamicBatcher` (whole-batch backends, e.g. the HF decoding loop): when no batch is
  running, one waiting caller takes *every* pending request and runs them as one batch; requests that
  arrive meanwhile form the next batch.
- :class:`StepBatcher` (engines that decode one step at a time, e.g. vLLM's ``LLMEngine``): before
  every engine step, pending requests join the running batch (continuous batching); each request
  returns the moment it finishes, not when its batch does.

Leader/follower, no background thread: a caller that finds the engine free does the work itself and
hands over when its own requests are done, so there is nothing to start or shut down, a
single-threaded caller pays nothing, and an engine failure raises in every caller whose requests it
took. :meth:`exclusive` waits for the engine to be free and holds it (weight updates, sleep/wake).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class _Slot:
    item: Any
    done: bool = False
    result: Any = None
    error: BaseException | None = None


@dataclass
class BatchStats:
    """What the batcher did: how many engine calls and how many requests each took."""

    calls: int = 0
    requests: int = 0
    max_batch: int = 0
    sizes: list[int] = field(default_factory=list)

    def record(self, n: int) -> None:
        self.calls += 1
        self.requests += n
        self.max_batch = max(self.max_batch, n)
        if len(self.sizes) < 10_000:
            self.sizes.append(n)


class _Gate:
    """The shared lock/condition and the "engine busy" flag of both batchers."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._busy = False
        self.stats = BatchStats()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Wait until no batch is running and hold the engine for the block (no new batch starts)."""
        with self._cond:
            while self._busy:
                self._cond.wait()
            self._busy = True
        try:
            yield
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()


class DynamicBatcher(_Gate):
    """Serves concurrent :meth:`submit` calls with ``run_batch(items) -> results`` (same order)."""

    def __init__(self, run_batch: Callable[[list[Any]], Sequence[Any]], max_batch: int | None = None) -> None:
        super().__init__()
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._pending: list[_Slot] = []

    def submit(self, items: Sequence[Any]) -> list[Any]:
        """Results for ``items`` in order; blocks until they are done (possibly batched with others)."""
        slots = [_Slot(it) for it in items]
        if not slots:
            return []
        with self._cond:
            self._pending.extend(slots)
            while not all(s.done for s in slots):
                if self._busy or not self._pending:
                    self._cond.wait()
                    continue
                cut = len(self._pending) if self._max_batch is None else self._max_batch
                batch, self._pending = self._pending[:cut], self._pending[cut:]
                self._busy = True
                self._cond.release()
                try:
                    results, error = list(self._run_batch([s.item for s in batch])), None
                    if len(results) != len(batch):
                        results, error = [], RuntimeError(f"batch of {len(batch)} gave {len(results)} results")
                except BaseException as exc:  # noqa: BLE001 - handed to every caller of the batch
                    results, error = [], exc
                finally:
                    self._cond.acquire()
                self.stats.record(len(batch))
                for i, s in enumerate(batch):
                    s.done, s.error = True, error
                    if error is None:
                        s.result = results[i]
                self._busy = False
                self._cond.notify_all()
        for s in slots:
            if s.error is not None:
                raise s.error
        return [s.result for s in slots]


class StepEngine(Protocol):
    """An engine that decodes one step for all its running requests at a time."""

    def add(self, key: int, item: Any) -> None:
        """Start ``item`` under ``key`` (it joins the running batch at the next step)."""

    def step(self) -> list[tuple[int, Any]]:
        """One engine step; returns ``(key, result)`` for every request that finished in it."""

    def abort(self, keys: Sequence[int]) -> None:
        """Drop unfinished requests (after an engine error)."""


class StepBatcher(_Gate):
    """Continuous batching over a :class:`StepEngine`: requests join and leave between steps."""

    def __init__(self, engine: StepEngine) -> None:
        super().__init__()
        self._engine = engine
        self._pending: list[tuple[int, _Slot]] = []
        self._running: dict[int, _Slot] = {}
        self._next_key = 0

    def submit(self, items: Sequence[Any]) -> list[Any]:
        if not items:
            return []
        with self._cond:
            slots = []
            for it in items:
                slot = _Slot(it)
                self._pending.append((self._next_key, slot))
                self._next_key += 1
                slots.append(slot)
            while not all(s.done for s in slots):
                if self._busy or not (self._pending or self._running):
                    self._cond.wait()
                    continue
                self._busy = True
                joining, self._pending = self._pending, []
                self._running.update(joining)
                self._cond.release()
                finished: list[tuple[int, Any]] = []
                error: BaseException | None = None
                try:
                    for key, slot in joining:
                        self._engine.add(key, slot.item)
                    finished = self._engine.step()
                except BaseException as exc:  # noqa: BLE001 - handed to every running request
                    error = exc
                finally:
                    self._cond.acquire()
                if joining:
                    self.stats.record(len(self._running))
                for key, result in finished:
                    slot = self._running.pop(key, None)
                    if slot is not None:
                        slot.done, slot.result = True, result
                if error is not None:
                    keys = list(self._running)
                    for slot in self._running.values():
                        slot.done, slot.error = True, error
                    self._running.clear()
                    try:
                        self._engine.abort(keys)
                    except Exception:  # noqa: BLE001 - the original error is what callers need
                        pass
                self._busy = False
                self._cond.notify_all()
        for s in slots:
            if s.error is not None:
                raise s.error
        return [s.result for s in slots]
