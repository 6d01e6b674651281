"""Batch the generation requests of concurrent callers (one thread per episode) without lock-step rounds.

Why: in a lock-step rollout every episode waits for the slowest turn of its round, and the engine
idles while envs step. With one thread per episode, each episode submits its next LLM turn as soon as
its sandbox asks for it; these classes serve whatever is pending at that moment:

- :class:`DynamicBatcher` (whole-batch backends, e.g. the HF decoding loop): when no batch is
  running, one waiting caller takes *every* pending request and runs them as one batch; requests that
  arrive meanwhile form the next batch.
- :class:`StepBatcher` (engines that decode one step at a time: the HF backend's
  :class:`~mx_agents.backends.hf_engine.HFStepEngine`, vLLM's ``LLMEngine``): before every engine
  step, pending requests join the running batch (continuous batching); each request returns the
  moment it finishes, not when its batch does.

Leader/follower, no background thread: a caller that finds the engine free does the work itself and
hands over when its own requests are done, so there is nothing to start or shut down, a
single-threaded caller pays nothing, and an engine failure raises in every caller whose requests it
took. :meth:`exclusive` waits for the engine to be free and holds it (weight updates, sleep/wake);
on a :class:`StepBatcher` it first lets the running requests finish and starts no new one, so a
request never samples with two sets of weights.

:class:`BatchStats` counts what the engine did (decode steps by batch width, prompt tokens and those
served from a prefix cache); :func:`batch_metrics` turns the difference of two snapshots into the
trainer's ``rollout/`` metrics of one step (:func:`snapshot_backends` / :func:`backends_metrics` for
the backends of a run).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
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
    """What the batcher and its engine did.

    ``calls``/``requests``/``max_batch``/``sizes``: batches handed to a whole-batch engine (or, for a
    step engine, the running set each time requests joined it). ``width_hist``: decode steps by the
    number of rows they computed, the batch-width histogram. ``prompt_tokens``: tokens of the prompts
    prefilled; ``cached_tokens``: those whose KV came from a prefix cache instead of a forward pass.
    ``engine_s``: wall seconds the engine worked (batches, or admissions plus decode steps): set
    against a rollout's wall time it says whether the rollout waited on the engine or the engine on
    the episodes (sandboxed scripts and tools).
    """

    calls: int = 0
    requests: int = 0
    max_batch: int = 0
    sizes: list[int] = field(default_factory=list)
    width_hist: dict[int, int] = field(default_factory=dict)
    prompt_tokens: int = 0
    cached_tokens: int = 0
    engine_s: float = 0.0
    draft_tokens: int = 0
    accepted_tokens: int = 0

    def record(self, n: int) -> None:
        self.calls += 1
        self.requests += n
        self.max_batch = max(self.max_batch, n)
        if len(self.sizes) < 10_000:
            self.sizes.append(n)

    def record_step(self, width: int) -> None:
        """One decode step over ``width`` rows."""
        if width > 0:
            self.width_hist[width] = self.width_hist.get(width, 0) + 1

    def record_prompt(self, tokens: int, cached: int) -> None:
        """A prompt of ``tokens`` tokens was admitted, ``cached`` of them served from a prefix cache."""
        self.prompt_tokens += tokens
        self.cached_tokens += cached

    def record_draft(self, proposed: int, accepted: int) -> None:
        """Speculative decoding: a row proposed ``proposed`` draft tokens and ``accepted`` were kept."""
        self.draft_tokens += proposed
        self.accepted_tokens += accepted

    def snapshot(self) -> BatchStats:
        """A copy to diff against later (:func:`batch_metrics`)."""
        return BatchStats(self.calls, self.requests, self.max_batch, list(self.sizes), dict(self.width_hist),
                          self.prompt_tokens, self.cached_tokens, self.engine_s, self.draft_tokens,
                          self.accepted_tokens)


def batch_metrics(now: BatchStats, before: BatchStats | None = None, prefix: str = "rollout/") -> dict[str, float]:
    """Metrics of what happened between two snapshots (``before=None``: since the start).

    ``batch_width_mean``/``_max``: rows per decode step, ``batch_width_hist_<w>``: decode steps of
    width ``w`` (powers-of-two buckets ``1``, ``2``, ``3-4``, ``5-8``, ...; the histogram), ``decode_steps``,
    ``single_row_steps``: the fraction of steps that computed one row; ``prefix_hit_rate``: prompt
    tokens served from the prefix cache / prompt tokens (absent when no prompt was admitted);
    ``engine_s``: seconds the engine worked (absent when it did nothing); ``draft_tokens`` and
    ``draft_accept_rate``: speculative decoding's proposed draft tokens and the fraction accepted.
    """
    base = before.width_hist if before is not None else {}
    hist = {w: c - base.get(w, 0) for w, c in now.width_hist.items() if c - base.get(w, 0) > 0}
    out: dict[str, float] = {}
    steps = sum(hist.values())
    if steps:
        out[f"{prefix}decode_steps"] = float(steps)
        out[f"{prefix}batch_width_mean"] = sum(w * c for w, c in hist.items()) / steps
        out[f"{prefix}batch_width_max"] = float(max(hist))
        out[f"{prefix}single_row_steps"] = hist.get(1, 0) / steps
        for w, c in sorted(hist.items()):
            hi = 1 << max(0, (w - 1).bit_length())  # bucket (hi/2, hi]
            label = str(hi) if hi <= 2 else f"{hi // 2 + 1}-{hi}"
            key = f"{prefix}batch_width_hist_{label}"
            out[key] = out.get(key, 0.0) + c
    prompt = now.prompt_tokens - (before.prompt_tokens if before is not None else 0)
    if prompt > 0:
        cached = now.cached_tokens - (before.cached_tokens if before is not None else 0)
        out[f"{prefix}prompt_tokens"] = float(prompt)
        out[f"{prefix}prefix_hit_rate"] = cached / prompt
    drafted = now.draft_tokens - (before.draft_tokens if before is not None else 0)
    if drafted > 0:
        accepted = now.accepted_tokens - (before.accepted_tokens if before is not None else 0)
        out[f"{prefix}draft_tokens"] = float(drafted)
        out[f"{prefix}draft_accept_rate"] = accepted / drafted
    busy = now.engine_s - (before.engine_s if before is not None else 0.0)
    if busy > 0:
        out[f"{prefix}engine_s"] = busy
    return out


def _total(stats: Sequence[BatchStats]) -> BatchStats:
    out = BatchStats()
    for st in stats:
        for w, c in st.width_hist.items():
            out.width_hist[w] = out.width_hist.get(w, 0) + c
        out.prompt_tokens += st.prompt_tokens
        out.cached_tokens += st.cached_tokens
        out.engine_s += st.engine_s
        out.draft_tokens += st.draft_tokens
        out.accepted_tokens += st.accepted_tokens
    return out


def snapshot_backends(backends: Iterable[Any]) -> list[tuple[BatchStats, BatchStats]]:
    """``(live stats, snapshot)`` of every distinct backend with ``batch_stats`` (a role's engine, or
    one shared by both roles), to pass to :func:`backends_metrics` after a rollout."""
    unique = {id(b): b for b in backends}.values()
    return [(st, st.snapshot()) for b in unique if isinstance(st := getattr(b, "batch_stats", None), BatchStats)]


def backends_metrics(snapshots: Sequence[tuple[BatchStats, BatchStats]], prefix: str = "rollout/") -> dict[str, float]:
    """:func:`batch_metrics` of everything the backends did since :func:`snapshot_backends`, summed."""
    if not snapshots:
        return {}
    return batch_metrics(_total([now for now, _ in snapshots]), _total([then for _, then in snapshots]), prefix)


class _Gate:
    """The shared lock/condition and the "engine busy" flag of both batchers."""

    def __init__(self, stats: BatchStats | None = None) -> None:
        self._cond = threading.Condition()
        self._busy = False
        self.stats = stats if stats is not None else BatchStats()

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
                t0 = time.perf_counter()
                try:
                    results, error = list(self._run_batch([s.item for s in batch])), None
                    if len(results) != len(batch):
                        results, error = [], RuntimeError(f"batch of {len(batch)} gave {len(results)} results")
                except BaseException as exc:  # noqa: BLE001 - handed to every caller of the batch
                    results, error = [], exc
                finally:
                    self._cond.acquire()
                self.stats.engine_s += time.perf_counter() - t0
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

    # Optional: ``step_width() -> int``, the rows the last step computed (for the width histogram);
    # without it the batcher counts the requests it has in flight.


class StepBatcher(_Gate):
    """Continuous batching over a :class:`StepEngine`: requests join and leave between steps."""

    def __init__(self, engine: StepEngine, stats: BatchStats | None = None) -> None:
        super().__init__(stats)
        self._engine = engine
        self._pending: list[tuple[int, _Slot]] = []
        self._running: dict[int, _Slot] = {}
        self._next_key = 0
        self._draining = 0  # exclusive() callers waiting for the running requests to finish

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Let the running requests finish (pending ones do not join meanwhile), then hold the engine
        for the block: weights loaded here never change under a request half way through."""
        with self._cond:
            self._draining += 1
            try:
                while self._busy or self._running:
                    self._cond.wait()
            finally:
                self._draining -= 1
            self._busy = True
        try:
            yield
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()

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
                admit = self._pending and not self._draining
                if self._busy or not (admit or self._running):
                    self._cond.wait()
                    continue
                self._busy = True
                joining: list[tuple[int, _Slot]] = []
                if admit:
                    joining, self._pending = self._pending, []
                self._running.update(joining)
                in_flight = len(self._running)
                self._cond.release()
                finished: list[tuple[int, Any]] = []
                error: BaseException | None = None
                t0 = time.perf_counter()
                try:
                    for key, slot in joining:
                        self._engine.add(key, slot.item)
                    finished = self._engine.step()
                except BaseException as exc:  # noqa: BLE001 - handed to every running request
                    error = exc
                finally:
                    self._cond.acquire()
                self.stats.engine_s += time.perf_counter() - t0
                if joining:
                    self.stats.record(len(self._running))
                if error is None:
                    width = getattr(self._engine, "step_width", None)
                    self.stats.record_step(width() if width is not None else in_flight)
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
