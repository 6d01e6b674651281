"""``HFStepEngine``: continuous batching for :class:`~mx_agents.backends.hf.HFBackend`, one decode step
at a time, with a prefix cache.

The engine keeps a running set of rows and one batched KV cache for them. A
:class:`~mx_agents.continuous.StepBatcher` drives it: before every decode step the requests that
arrived meanwhile join (:meth:`HFStepEngine.add`), and a row returns the moment it finishes, so a
request that comes in while others decode waits for one step, not for the whole batch.

Joining a row:

1. the longest prefix of its prompt whose key/value states are in the
   :class:`~mx_agents.backends.prefix_cache.PrefixCache` is taken from there (a sub-agent's earlier
   turns, the system prompt + task + script shared by the N executions of a design, the designer
   prompt shared by the M designs);
2. the rest of the prompt is prefilled alone (batch of one: no padding, so no compute on pad tokens)
   and its states go into the prefix cache for the rows that follow; the first token is sampled;
3. the row's states are copied into the batch cache.

Layout of the batch cache: every row's states end at the last column (rows are right-aligned, the
columns before a shorter row are zero and masked), so one decode step appends one column for all
rows. Positions are explicit per row (the number of states it has), so a row computes what it would
alone, up to float round-off between batch shapes. A finished row's states (prompt + reply, less the
last sampled token, which was never fed) go into the prefix cache: the sub-agent's next turn, whose
prompt starts with them, prefills only its new message. Leading columns that no row uses any more are
dropped when rows leave.

The engine is used by one thread at a time (the batcher's leader); it is not thread-safe itself.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mx_agents.backends.sampling import select_tokens

if TYPE_CHECKING:
    import torch

    from mx_agents.backends.hf import HFBackend, _Row
    from mx_agents.backends.prefix_cache import PrefixCache
    from mx_agents.continuous import BatchStats

    KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer (key, value), [batch, kv_heads, tokens, head_dim]


def cache_layers(cache: Any) -> KV:
    """Per-layer ``(key, value)`` tensors of a transformers ``DynamicCache`` (4.x and 5.x layouts)."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        return [(layer.keys, layer.values) for layer in layers]
    return list(zip(cache.key_cache, cache.value_cache, strict=True))


def set_cache_layers(cache: Any, kv: KV) -> None:
    """Replace a ``DynamicCache``'s tensors (no copy)."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        for layer, (k, v) in zip(layers, kv, strict=True):
            layer.keys, layer.values = k, v
    else:
        cache.key_cache[:] = [k for k, _ in kv]
        cache.value_cache[:] = [v for _, v in kv]


def slack_columns(n: int) -> int:
    """Spare columns a batch cache of ``n`` token columns is given: a decode step writes its column
    there, and only every ``slack_columns(n)``-th step re-allocates (copies) the cache."""
    return max(8, n // 8)


_SLACK_LAYER: Any = None


def _slack_layer_class() -> Any:
    """A transformers ``DynamicLayer`` (5.x) whose ``update`` writes the new columns into spare
    capacity after the current ones and returns a view, instead of concatenating into new tensors.

    Why: ``DynamicLayer.update`` copies the whole cache at every decode step (``torch.cat``), so a
    step costs O(rows x columns) in copies: 30 % of a batch-6 decode step of the 135M model at 400
    columns on a 2-core CPU (torch profiler, ``aten::cat``), and O(n^2) over a generation. Here a step
    writes only its own column; the cache is re-allocated with :func:`slack_columns` spare columns when
    it runs out, or when its tensors are no longer a view of this layer's buffer (replaced by
    :func:`set_cache_layers`, or re-indexed by ``batch_select_indices``). Nothing else holds a view of
    the spare columns, so writing them changes no tensor anybody reads."""
    global _SLACK_LAYER
    if _SLACK_LAYER is None:
        from transformers.cache_utils import DynamicLayer

        class SlackLayer(DynamicLayer):
            _bufs: tuple[Any, Any] | None = None

            def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
                if not self.is_initialized:
                    self.lazy_initialization(key_states, value_states)
                t = key_states.shape[-2]
                if self.keys.numel() == 0:
                    self.keys, self.values = key_states[..., :0, :], value_states[..., :0, :]
                start = _start_in(self.keys, self._bufs[0], t) if self._bufs is not None else None
                if start is None or _start_in(self.values, self._bufs[1], t) != start:
                    n = self.keys.shape[-2]
                    self._bufs = (_with_slack(self.keys, n + t), _with_slack(self.values, n + t))
                    start = 0
                n = self.keys.shape[-2]
                kb, vb = self._bufs
                kb[:, :, start + n : start + n + t] = key_states
                vb[:, :, start + n : start + n + t] = value_states
                self.keys, self.values = kb[:, :, start : start + n + t], vb[:, :, start : start + n + t]
                return self.keys, self.values

        _SLACK_LAYER = SlackLayer
    return _SLACK_LAYER


def _start_in(view: Any, buf: Any, t: int) -> int | None:
    """The column of ``buf`` where ``view`` starts when ``view`` is ``buf[:, :, c : c + n]`` and ``buf``
    has ``t`` unused columns after it; else ``None``."""
    if (view.dim() != 4 or view.shape[0] != buf.shape[0] or view.shape[1] != buf.shape[1]
            or view.stride() != buf.stride()
            or view.untyped_storage().data_ptr() != buf.untyped_storage().data_ptr()):
        return None
    start, rest = divmod(view.storage_offset() - buf.storage_offset(), buf.stride(2))
    if rest or start < 0 or start + view.shape[2] + t > buf.shape[2]:
        return None
    return start


def _with_slack(x: Any, total: int) -> Any:
    """A new ``[B, H, total + slack, D]`` buffer whose first columns hold ``x``."""
    buf = x.new_empty((x.shape[0], x.shape[1], total + slack_columns(total), x.shape[3]))
    buf[:, :, : x.shape[2]] = x
    return buf


def new_cache(kv: KV, *, slack: bool = False, buffers: KV | None = None) -> Any:
    """A ``DynamicCache`` holding ``kv`` (no copy). ``slack``: the cache's updates write into spare
    columns (see :func:`_slack_layer_class`; transformers 5.x layout) instead of concatenating;
    ``buffers``: per layer, the tensors ``kv``'s are leading views of, whose later columns are spare."""
    from transformers import DynamicCache

    cache = DynamicCache()
    slack = slack and hasattr(cache, "layers")
    if slack:
        cache.layer_class_to_replicate = _slack_layer_class()
    for i, (k, v) in enumerate(kv):
        cache.update(k[..., :0, :], v[..., :0, :], i)
    set_cache_layers(cache, kv)
    if slack and buffers is not None:
        for layer, bufs in zip(cache.layers, buffers, strict=True):
            layer._bufs = bufs
    return cache


def step_engine_supported(model: Any) -> str | None:
    """``None`` when the model's cache is the plain one this engine re-lays (full attention on every
    layer); else the reason (sliding-window or linear-attention layers keep other states)."""
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    kinds = getattr(text, "layer_types", None)
    if kinds and any(k != "full_attention" for k in kinds):
        return f"layer types {sorted(set(kinds))}"
    if getattr(text, "sliding_window", None) and getattr(text, "use_sliding_window", True):
        return f"sliding window {text.sliding_window}"
    return None


@dataclass
class _Live:
    """A row in the running batch."""

    key: int
    row: _Row
    n_kv: int  # tokens whose states are in the cache: prompt + reply, less the pending token
    pending: int  # the last sampled token, fed at the next decode step


class HFStepEngine:
    """A :class:`~mx_agents.continuous.StepEngine` over an :class:`HFBackend`'s model; see the module
    docstring. ``prefix_cache``: ``None`` prefills every prompt whole."""

    #: decode steps write into spare columns of the batch cache (:func:`new_cache`); ``False``: the
    #: transformers cache concatenates at every step (the naive side of benchmarks/test_kv_cache_bench.py)
    slack_cache = True

    def __init__(self, backend: HFBackend, stats: BatchStats, prefix_cache: PrefixCache | None) -> None:
        self.backend = backend
        self.stats = stats
        self.prefix_cache = prefix_cache
        self._waiting: deque[tuple[int, _Row]] = deque()
        self._live: list[_Live] = []
        self._cache: Any = None  # the batch's DynamicCache, [len(_live), kv_heads, _width, head_dim] per layer
        self._width = 0
        self._last_width = 0
        self._params = list(backend.model.parameters())
        self._weights_seen = self._weights_key()

    def _weights_key(self) -> int:
        """Changes whenever a parameter is modified in place: a learner that trains the served model
        object itself (no ``load_weights`` call) updates it with in-place ops, each of which bumps the
        tensor's version counter."""
        return sum(p._version for p in self._params)

    # -- StepEngine ------------------------------------------------------------------------------

    def add(self, key: int, item: Any) -> None:
        ids, params = item
        self._waiting.append((key, self.backend._new_row(ids, params)))

    def step_width(self) -> int:
        """Rows the last step decoded (0 when it only prefilled)."""
        return self._last_width

    def abort(self, keys: Any) -> None:
        drop = set(keys)
        self._waiting = deque((k, r) for k, r in self._waiting if k not in drop)
        keep = [j for j, live in enumerate(self._live) if live.key not in drop]
        if not keep:
            self._live, self._cache, self._width = [], None, 0
        elif len(keep) < len(self._live):
            self._select(keep)

    def step(self) -> list[tuple[int, Any]]:
        """Admit waiting rows (up to ``max_batch_size`` running and within the key/value budget, see
        :meth:`_fits`), then one decode step for all."""
        import torch

        done: list[tuple[int, Any]] = []
        self._last_width = 0
        if self.prefix_cache is not None and (key := self._weights_key()) != self._weights_seen:
            self.prefix_cache.clear()  # states computed with the previous weights
            self._weights_seen = key
        with torch.inference_mode():
            joined: list[tuple[_Live, KV]] = []
            width = self._width
            while self._waiting and len(self._live) + len(joined) < self.backend.max_batch_size:
                key, row = self._waiting[0]
                rows = len(self._live) + len(joined) + 1
                need = max(width, len(row.prompt_ids))
                if rows > 1 and not self._fits(rows, need):
                    break  # first come, first served: the queue waits for rows to leave
                self._waiting.popleft()
                if row.budget <= 0:
                    row.finish_reason = "length"
                    done.append((key, self.backend._to_completion(row)))
                    continue
                live, kv = self._prefill(key, row)
                if row.finish_reason:  # its first token ended it
                    done.append((key, self.backend._to_completion(row)))
                else:
                    joined.append((live, kv))
                    width = max(width, live.n_kv)
            if joined:
                self._join(joined)
            if self._live:
                done.extend(self._decode())
        return done

    # -- internals -------------------------------------------------------------------------------

    def _fits(self, rows: int, width: int) -> bool:
        """Whether a batch cache of ``rows`` x ``width`` token states stays within the backend's
        ``kv_cache_bytes`` (``None``: no budget, ``max_batch_size`` alone bounds the batch).

        Why a budget: the batch cache is rectangular (rows right-aligned to the longest), so its size is
        rows x (the longest row + its spare columns, :func:`slack_columns`), and the re-allocation when
        the spare columns run out briefly holds it twice. 64 rows of 1.5k-token conversations of a 135M model are 4.4 GB
        in float32. The budget is checked when rows join; rows that are running keep growing by one
        column per step (a running row is never evicted)."""
        budget = self.backend.kv_cache_bytes
        return budget is None or rows * (width + slack_columns(width)) * self.backend.kv_bytes_per_token <= budget

    def _prefill(self, key: int, row: _Row) -> tuple[_Live, KV]:
        import torch

        b = self.backend
        ids = row.prompt_ids
        n, cached = (0, None) if self.prefix_cache is None else self.prefix_cache.match(ids, len(ids) - 1)
        self.stats.record_prompt(len(ids), n)
        kw: dict[str, Any] = {b._keep_kw: 1} if b._keep_kw else {}
        if cached is not None:
            kw[b._cache_kw] = new_cache([(cached[i, 0][None], cached[i, 1][None]) for i in range(cached.shape[0])])
        x = torch.tensor([ids[n:]], dtype=torch.long, device=b.device)
        positions = torch.arange(n, len(ids), device=b.device)[None]
        out = b.model(input_ids=x, position_ids=positions, use_cache=True, **kw)
        kv = cache_layers(b._cache_of(out))
        if self.prefix_cache is not None:
            self.prefix_cache.insert(ids, [(k[0], v[0]) for k, v in kv])
        token, logprob = self._select_tokens(out.logits[:, -1, :], [row])
        b._append(row, token[0], logprob[0])
        return _Live(key, row, len(ids), token[0]), kv

    def _select_tokens(self, logits: torch.Tensor, rows: list[_Row]) -> tuple[list[int], list[float]]:
        histories = [r.prompt_ids + r.response_ids for r in rows] \
            if any(r.params.repetition_penalty != 1.0 for r in rows) else None
        tokens, lps = select_tokens(logits, [r.params for r in rows], [r.generator for r in rows], histories)
        return tokens.tolist(), lps.tolist()

    def _join(self, joined: list[tuple[_Live, KV]]) -> None:
        """Copy the joining rows' states into the batch cache, right-aligned, widening it if needed."""
        if self._cache is None and len(joined) == 1:  # nothing to align with: take the cache as it is
            live, kv = joined[0]
            self._cache, self._width, self._live = new_cache(kv, slack=self.slack_cache), live.n_kv, [live]
            return
        old = cache_layers(self._cache) if self._cache is not None else None
        width = max([self._width] + [live.n_kv for live, _ in joined])
        b_old, b_new = len(self._live), len(self._live) + len(joined)
        layers: KV = []
        buffers: KV = []
        for i, (k0, _) in enumerate(joined[0][1]):
            # spare columns after the last one: the next decode steps write there (see new_cache)
            shape = (b_new, k0.shape[1], width + slack_columns(width), k0.shape[3])
            k_buf, v_buf = k0.new_zeros(shape), k0.new_zeros(shape)
            k_all, v_all = k_buf[:, :, :width], v_buf[:, :, :width]
            if old is not None:
                k_all[:b_old, :, width - self._width :] = old[i][0]
                v_all[:b_old, :, width - self._width :] = old[i][1]
            for j, (live, kv) in enumerate(joined):
                k_all[b_old + j, :, width - live.n_kv :] = kv[i][0][0]
                v_all[b_old + j, :, width - live.n_kv :] = kv[i][1][0]
            layers.append((k_all, v_all))
            buffers.append((k_buf, v_buf))
        self._cache = new_cache(layers, slack=self.slack_cache, buffers=buffers)
        self._width = width
        self._live.extend(live for live, _ in joined)

    def _decode(self) -> list[tuple[int, Any]]:
        import torch

        b = self.backend
        live, width = self._live, self._width
        n = torch.tensor([r.n_kv for r in live], dtype=torch.long, device=b.device)
        # Row r's states sit in the last n_kv columns; the new token's column is real for every row.
        mask = (torch.arange(width + 1, device=b.device)[None, :] >= (width - n)[:, None]).long()
        tokens = torch.tensor([[r.pending] for r in live], dtype=torch.long, device=b.device)
        kw: dict[str, Any] = {b._keep_kw: 1} if b._keep_kw else {}
        out = b.model(input_ids=tokens, attention_mask=mask, position_ids=n[:, None], use_cache=True,
                      **{b._cache_kw: self._cache}, **kw)
        self._cache, self._width, self._last_width = b._cache_of(out), width + 1, len(live)
        for r in live:
            r.n_kv += 1
        picked, lps = self._select_tokens(out.logits[:, -1, :], [r.row for r in live])
        done: list[tuple[int, Any]] = []
        keep: list[int] = []
        kv = cache_layers(self._cache) if self.prefix_cache is not None else None
        for j, (r, tok, lp) in enumerate(zip(live, picked, lps, strict=True)):
            b._append(r.row, tok, lp)
            r.pending = tok
            if not r.row.finish_reason:
                keep.append(j)
                continue
            if kv is not None and self.prefix_cache is not None:
                seq = r.row.prompt_ids + r.row.response_ids
                self.prefix_cache.insert(seq[: r.n_kv], [(k[j], v[j]) for k, v in kv], offset=self._width - r.n_kv)
            done.append((r.key, b._to_completion(r.row)))
        if len(keep) < len(live):
            if keep:
                self._select(keep)
            else:
                self._live, self._cache, self._width = [], None, 0
        return done

    def _select(self, keep: list[int]) -> None:
        """Keep rows ``keep`` (indices into the running set); drop the leading columns none of them uses."""
        import torch

        self._live = [self._live[j] for j in keep]
        width = max(r.n_kv for r in self._live)
        cut = self._width - width
        layers = getattr(self._cache, "layers", None)
        if self.slack_cache and layers and isinstance(layers[0], _slack_layer_class()):
            # one copy per kept row straight into a buffer with spare columns, rather than an index
            # select and then a re-allocation at the next decode step
            kv, buffers = [], []
            for k, v in cache_layers(self._cache):
                shape = (len(keep), k.shape[1], width + slack_columns(width), k.shape[3])
                kb, vb = k.new_empty(shape), v.new_empty(shape)
                for j, r in enumerate(keep):
                    kb[j, :, :width] = k[r, :, cut:]
                    vb[j, :, :width] = v[r, :, cut:]
                kv.append((kb[:, :, :width], vb[:, :, :width]))
                buffers.append((kb, vb))
            set_cache_layers(self._cache, kv)
            for layer, bufs in zip(layers, buffers, strict=True):
                layer._bufs = bufs
        else:
            self._cache.batch_select_indices(torch.tensor(keep, device=self.backend.device))
            if cut:
                set_cache_layers(self._cache, [(k[:, :, cut:], v[:, :, cut:]) for k, v in cache_layers(self._cache)])
        self._width = width
