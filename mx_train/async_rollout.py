"""Async rollouts (``rollout.async: {max_staleness: k}``): step t+1's rollout runs while step t updates.

Weights are numbered by trainer step: ``W_s`` is the policy after ``s`` updates (``W_0`` the starting
one). A synchronous run samples step s with ``W_s``. With ``max_staleness: k`` step s samples with
``W_{max(base, s-k)}`` (``base``: the step this invocation started at, fresh or resumed), pinned, not
"the newest at hand", so a run is the same whatever the timing and k = 0 *is* the synchronous run
step for step. A rollout thread (:class:`AsyncRollout`) draws step s's tasks, waits until the trainer
has published ``W_{s-k}``, loads it into the engine when it is not there yet, and runs the rollout;
the trainer takes the rollouts in step order, trains on each and publishes its weights. The thread is
never more than k steps ahead: it blocks on the weights it needs.

Where the weights go between (the trainer decides, :meth:`mx_train.trainer.Trainer._publish_async`):

* k = 0: the engine already holds ``W_t`` when step t's rollout starts (the learner trains the
  engine's own model, or pushed into it at the end of its update, as in a synchronous run);
* k = 1, local engine: step t+1's rollout needs ``W_t``, and the engine is idle from the end of step
  t's rollout until it gets it; the trainer pushes the learner's weights straight into it (no copy)
  before starting step t's update, with the usual stale/synced log-prob checks;
* k >= 2 (and Ray for any k >= 1): the engine is still busy with earlier steps when ``W_t`` exists, so
  the trainer hands over a snapshot (a clone; on CPU for Ray), which the rollout thread loads before
  step t+k's rollout: at most k-1 snapshots alive locally, k on Ray.

With k >= 1 the local engine needs weights of its own (the learner updates while it samples): the
learner trains a deep copy of the engine's model (:func:`mx_train.assembly.build_learners`
``engine_copy``), one more model in memory (in the engine's dtype: 0.54 GB for SmolLM2-135M in fp32),
and a vLLM engine may not sleep during the update (both stay resident). Stale samples carry their
sampling log-probs from older weights: the learner's off-policy correction (``learner.
off_policy_correction: auto`` resolves to TIS here, the learner's ``on_weights_updated`` being set)
re-weights each token by ``min(pi_learner / pi_sampler, cap)``; ``old_logprobs: sampling`` instead
takes the PPO ratio against the sampler (clipped) and applies no extra weight.

Checkpoints: a full checkpoint *drains* the rollout thread first (it finishes every rollout its
published weights allow: steps t+1..t+k after step t, then waits for ``W_{t+1}``), and the finished
rollouts are saved in it (``trainer_state.json`` extra ``async_pending``), so ``--resume`` trains on
exactly those, then continues as the uninterrupted run would. Weights-only checkpoints do not drain.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mx_agents.transition import Transition


@dataclass
class RolloutResult:
    """One step's rollout, made by the rollout thread (or in line, synchronously)."""

    step: int
    task_ids: list[str]
    transitions: list[Transition]
    metrics: dict[str, Any]  # the rollout's summary: episodes, rewards, credit, engine batch counters
    weights_step: int  # the trainer step whose weights sampled it (``W_{weights_step}``)
    versions: dict[str, int]  # role -> learner version of those weights
    time_s: float = 0.0  # the rollout's own duration (tasks drawn to advantages assigned)
    weights_wait_s: float = 0.0  # the rollout thread's wait for those weights (async only)
    load_s: float = 0.0  # loading them into the engine in the rollout thread (async snapshots)
    records: list[Any] | None = field(default=None, repr=False)  # episode records (local; not saved)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable (a checkpoint's ``async_pending``): everything but the episode records."""
        return {"step": self.step, "task_ids": list(self.task_ids),
                "transitions": [dataclasses.asdict(t) for t in self.transitions],
                "metrics": {k: _plain(v) for k, v in self.metrics.items()}, "weights_step": self.weights_step, "versions": dict(self.versions),
                "time_s": self.time_s, "weights_wait_s": self.weights_wait_s, "load_s": self.load_s}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RolloutResult:
        return cls(step=int(data["step"]), task_ids=list(data["task_ids"]),
                   transitions=[Transition(**t) for t in data["transitions"]], metrics=dict(data["metrics"]),
                   weights_step=int(data["weights_step"]), versions={k: int(v) for k, v in data["versions"].items()},
                   time_s=float(data.get("time_s", 0.0)), weights_wait_s=float(data.get("weights_wait_s", 0.0)),
                   load_s=float(data.get("load_s", 0.0)))


def _plain(value: Any) -> Any:
    """A metric as JSON holds it (numpy scalars as Python numbers)."""
    item = getattr(value, "item", None)
    return item() if callable(item) and not isinstance(value, str | bytes) else value


@dataclass
class Published:
    """``W_step`` handed to the rollout thread: ``weights`` (engine role -> state dict snapshot) to
    load before sampling, or ``None`` when the engines already hold them (or, on Ray with k = 0, the
    live learners may be read: the trainer waits meanwhile)."""

    step: int
    versions: dict[str, int]
    weights: dict[str, dict[str, Any]] | None = None


class FrozenLearner:
    """A learner's weights at one version, for the Ray weight push of a rollout thread: the push and
    a dead worker's re-sync read ``version`` and ``weights_for_sync()`` only, never the live learner
    (which is updating meanwhile)."""

    def __init__(self, version: int, weights: Mapping[str, Any]) -> None:
        self.version = int(version)
        self._weights = dict(weights)

    def weights_for_sync(self) -> dict[str, Any]:
        return dict(self._weights)


def frozen_view(learners: Mapping[str, Any], pub: Published) -> dict[str, Any]:
    """Role -> :class:`FrozenLearner` of ``pub`` (roles sharing a learner share one view, so the engine
    roles of :func:`mx_train.distributed.engine_roles` stay the same); the live learners when ``pub``
    holds no snapshot."""
    if pub.weights is None:
        return dict(learners)
    from mx_train.distributed import engine_roles

    serves = engine_roles(learners)
    views: dict[str, FrozenLearner] = {}
    out: dict[str, Any] = {}
    for role in learners:
        engine = serves[role]
        if engine not in views:
            views[engine] = FrozenLearner(pub.versions[engine], pub.weights[engine])
        out[role] = views[engine]
    return out


def snapshot(weights: Mapping[str, Any], device: Any = None) -> dict[str, Any]:
    """A detached copy of a state dict (on ``device``, default: where each tensor is)."""
    return {k: (v.detach().to(device, copy=True) if device is not None else v.detach().clone())
            for k, v in weights.items()}


class AsyncRollout:
    """The rollout thread: makes step ``s``'s rollout with ``W_{max(base, s-k)}`` for ``s`` from
    ``base + len(pending)`` to ``total - 1``, in order (see module doc).

    Args:
        produce: ``(step, published) -> RolloutResult`` (draws the tasks, runs the rollout); called
            in the rollout thread only, one step at a time.
        load: ``(published) -> None``: puts ``published.weights`` into the engines; called in the
            rollout thread before a rollout whose weights the engines do not hold yet.
        max_staleness: k.
        base: the first step of this invocation (its weights ``W_base`` must be published before
            :meth:`start`).
        total: the step count to stop before.
        pending: rollouts made ahead by an earlier invocation (a checkpoint's), steps ``base``...
    """

    def __init__(self, produce: Callable[[int, Published], RolloutResult], load: Callable[[Published], None],
                 max_staleness: int, base: int, total: int, pending: Sequence[RolloutResult] = ()) -> None:
        self.produce = produce
        self.load = load
        self.k = int(max_staleness)
        self.base = int(base)
        self.total = int(total)
        self._cond = threading.Condition()
        self._published: dict[int, Published] = {}
        self._results: dict[int, RolloutResult] = {}
        for i, r in enumerate(pending):
            if r.step != self.base + i:
                raise ValueError(f"pending async rollouts must be steps {self.base}.. in order, got step {r.step}")
            self._results[r.step] = r
        self.next_step = self.base + len(self._results)  # the next step the thread makes
        self._loaded = -1  # the step whose published snapshot the engines hold (-1: none loaded here)
        self._busy: list[tuple[float, float]] = []  # (start, end) of each rollout: the overlap metric
        self._running_since: float | None = None
        self._idle = True  # waiting for weights (or finished): what drain() waits for
        self._stop = False
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ the thread
    def needed(self, step: int) -> int:
        """The trainer step whose weights sample ``step``."""
        return max(self.base, step - self.k)

    def start(self) -> AsyncRollout:
        if self.needed(self.next_step) not in self._published and self.next_step < self.total:
            raise RuntimeError(f"publish W_{self.needed(self.next_step)} before starting the rollout thread")
        self._thread = threading.Thread(target=self._loop, name="mx-async-rollout", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        try:
            while True:
                with self._cond:
                    s = self.next_step
                    if s >= self.total or self._stop:
                        self._idle = True
                        self._cond.notify_all()
                        return
                    need = self.needed(s)
                    t0 = time.perf_counter()
                    self._idle = need not in self._published
                    self._cond.notify_all()
                    while need not in self._published and not self._stop:
                        self._cond.wait()
                    if self._stop:
                        continue
                    self._idle = False
                    pub = self._published[need]
                    for old in [v for v in self._published if v < need]:
                        del self._published[old]  # a snapshot no later step needs
                    wait = time.perf_counter() - t0
                    self._running_since = time.perf_counter()
                t1 = time.perf_counter()
                if pub.weights is not None and self._loaded != need:
                    self.load(pub)
                    self._loaded = need
                load_s = time.perf_counter() - t1
                result = self.produce(s, pub)
                end = time.perf_counter()
                result.weights_wait_s, result.load_s = wait, load_s
                with self._cond:
                    self._busy.append((t1, end))
                    self._running_since = None
                    self._results[s] = result
                    self.next_step = s + 1
                    self._cond.notify_all()
        except BaseException as exc:  # noqa: BLE001 - handed to the trainer, raised there
            with self._cond:
                self._error = exc
                self._idle = True
                self._running_since = None
                self._cond.notify_all()

    # ------------------------------------------------------------------ the trainer's side
    def publish(self, pub: Published) -> None:
        """``W_{pub.step}`` is ready for the rollouts that need it."""
        with self._cond:
            self._published[pub.step] = pub
            if self.next_step < self.total and self.needed(self.next_step) in self._published and not self._stop:
                self._idle = False  # it has work now, even before it wakes: drain() must wait for it
            self._cond.notify_all()

    def get(self, step: int) -> tuple[RolloutResult, float]:
        """Step ``step``'s rollout (waiting for it) and the seconds waited."""
        t0 = time.perf_counter()
        with self._cond:
            while step not in self._results:
                self._raise_error()
                if self._thread is None or not self._thread.is_alive():
                    raise RuntimeError(f"the rollout thread stopped before making step {step}'s rollout")
                self._cond.wait(timeout=1.0)
            return self._results.pop(step), time.perf_counter() - t0

    def drain(self) -> list[RolloutResult]:
        """Wait until the thread has made every rollout the published weights allow (it then waits for
        newer ones, or has finished); the rollouts made and not yet taken, in step order."""
        with self._cond:
            while not (self._idle and self._running_since is None):
                self._raise_error()
                self._cond.wait(timeout=1.0)
            self._raise_error()
            return [self._results[s] for s in sorted(self._results)]

    def overlap(self, t0: float, t1: float) -> float:
        """Seconds of [t0, t1] during which a rollout ran (finished ones and the running one)."""
        now = time.perf_counter()
        with self._cond:
            spans = list(self._busy)
            if self._running_since is not None:
                spans.append((self._running_since, now))
            self._busy = [(a, b) for a, b in self._busy if b > t0]  # older ones cannot overlap later steps
        return sum(max(0.0, min(b, t1) - max(a, t0)) for a, b in spans)

    def _raise_error(self) -> None:
        if self._error is not None:
            raise RuntimeError("the async rollout thread failed") from self._error

    def close(self, timeout: float | None = None) -> None:
        """Stop after the running rollout (if any) and join the thread."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
