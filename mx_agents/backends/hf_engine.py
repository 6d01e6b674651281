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

Speculative decoding (``HFBackend(speculative=...)``, :mod:`~mx_agents.backends.drafts`): each row
proposes up to ``max_draft`` tokens read off n-gram matches (its own prompt and reply, then sequences
the engine finished recently), and one forward pass over ``1 + longest draft`` new columns per row
checks them; each draft token is accepted with the model's own probability of it, so what is sampled
is distributed exactly as without drafts. Rows accept different numbers of tokens, so the columns of
rejected and padding positions stay in the cache as *holes*: an explicit per-row mask of the valid
columns (``_valid``) replaces the right-aligned layout's implicit one, positions stay per row (its
number of valid states), and a finished row's valid columns are gathered for the prefix cache.

The engine is used by one thread at a time (the batcher's leader); it is not thread-safe itself.
"""

from __future__ import annotations

import time
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


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


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
    own: Any = None  # speculative decoding: the row's n-gram index (drafts.RowIndex)
    accept: float | None = None  # speculative decoding: the row's draft-token acceptance (EMA)


class HFStepEngine:
    """A :class:`~mx_agents.continuous.StepEngine` over an :class:`HFBackend`'s model; see the module
    docstring. ``prefix_cache``: ``None`` prefills every prompt whole."""

    #: decode steps write into spare columns of the batch cache (:func:`new_cache`); ``False``: the
    #: transformers cache concatenates at every step (the naive side of benchmarks/test_kv_cache_bench.py)
    slack_cache = True
    #: rows admitted at one step prefill in one forward pass (``False``: one pass per row, the naive
    #: side of the benchmark); rows whose uncached prompts share ``SHARE_MIN`` leading tokens with an
    #: earlier one's take a later pass, after the earlier one has put those states in the prefix cache
    batch_prefill = True
    SHARE_MIN = 16

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
        self.drafter = getattr(backend, "drafter", None)
        # speculative decoding: which columns of the batch cache hold each row's states ([rows, _width])
        self._valid: Any = None
        if self.drafter is not None:
            from mx_agents.backends.drafts import PassCost

            self._pass_cost = PassCost()
            self._accept_prior = 0.5  # acceptance of all rows' draft tokens (EMA): a new row's estimate

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
            self._live, self._cache, self._width, self._valid = [], None, 0, None
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
            admitted: list[tuple[int, _Row]] = []
            width = self._width
            while self._waiting and len(self._live) + len(admitted) < self.backend.max_batch_size:
                key, row = self._waiting[0]
                rows = len(self._live) + len(admitted) + 1
                need = max(width, len(row.prompt_ids))
                if rows > 1 and not self._fits(rows, need):
                    break  # first come, first served: the queue waits for rows to leave
                self._waiting.popleft()
                if row.budget <= 0:
                    row.finish_reason = "length"
                    done.append((key, self.backend._to_completion(row)))
                    continue
                admitted.append((key, row))
                width = need
            joined: list[tuple[_Live, KV]] = []
            for live, kv in self._prefill_all(admitted):
                if live.row.finish_reason:  # its first token ended it
                    done.append((live.key, self.backend._to_completion(live.row)))
                else:
                    joined.append((live, kv))
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

    def _prefill_all(self, admitted: list[tuple[int, _Row]]) -> list[tuple[_Live, KV]]:
        """Prefill the rows admitted at this step: together in one forward pass per *wave* (one pass
        costs about as much as a decode step however few its tokens: 107 ms for 10 tokens of one row
        of the 135M model on 2 CPU cores), each row's cached prefix from the prefix cache. A row whose
        uncached part starts with the same ``SHARE_MIN`` tokens as an earlier admitted row's (the N
        executions of a design, the M designs of a task) waits for a later wave, which finds that
        part in the prefix cache instead of computing it again."""
        if not self.batch_prefill or len(admitted) <= 1:
            return [self._prefill(key, row) for key, row in admitted]
        out: list[tuple[_Live, KV]] = []
        remaining = admitted
        while remaining:
            # each row's match against the prefix cache as it is now (the earlier waves added to it)
            wave, matches, later = [], [], []
            for key, row in remaining:
                match = self._match(row)
                shares = self.prefix_cache is not None and any(
                    _common_prefix(row.prompt_ids, other.prompt_ids) >= match[0] + self.SHARE_MIN for _, other in wave)
                if shares:
                    later.append((key, row))
                else:
                    wave.append((key, row))
                    matches.append(match)
            out += self._prefill_batch(wave, matches)
            remaining = later
        return out

    def _match(self, row: _Row) -> tuple[int, Any]:
        """``(n, kv)``: the longest cached prefix of the row's prompt, less its last token (whose logit
        the prefill needs), from the prefix cache; ``(0, None)`` without one."""
        ids = row.prompt_ids
        return (0, None) if self.prefix_cache is None else self.prefix_cache.match(ids, len(ids) - 1)

    def _start_row(self, key: int, row: _Row, token: int, logprob: float) -> _Live:
        """A prefilled row with its first token sampled, as a running row (with its own n-gram index
        under speculative decoding; a row that its first token ended goes to the draft history)."""
        self.backend._append(row, token, logprob)
        own = None
        if self.drafter is not None:
            own = self.drafter.row_index(row.prompt_ids + [token])
            if row.finish_reason:
                self.drafter.remember(own.tokens)
        return _Live(key, row, len(row.prompt_ids), token, own)

    def _prefill_batch(self, rows: list[tuple[int, _Row]], matches: list[tuple[int, Any]]) -> list[tuple[_Live, KV]]:
        """Rows' uncached prompt parts in one forward pass. Layout per row: its cached prefix
        right-aligned before column ``P`` (the longest one), its uncached tail right-aligned after it,
        so that every row's last prompt token is the last column (one logit per row); the columns in
        between are masked. Each row's states are then gathered into one contiguous run for the prefix
        cache and the batch cache. ``matches``: each row's :meth:`_match`."""
        import torch

        if len(rows) == 1:
            return [self._prefill(*rows[0], match=matches[0])]
        b = self.backend
        dev = b.device
        for (_, row), (n, _) in zip(rows, matches, strict=True):
            self.stats.record_prompt(len(row.prompt_ids), n)
        prefix = max(n for n, _ in matches)
        tail = max(len(row.prompt_ids) - n for (_, row), (n, _) in zip(rows, matches, strict=True))
        j_rows = len(rows)
        kw: dict[str, Any] = {b._keep_kw: 1} if b._keep_kw else {}
        valid = torch.zeros((j_rows, prefix + tail), dtype=torch.bool, device=dev)
        x = torch.full((j_rows, tail), b._pad_id if b._pad_id is not None else 0, dtype=torch.long, device=dev)
        positions = torch.zeros((j_rows, tail), dtype=torch.long, device=dev)
        for j, ((_, row), (n, _)) in enumerate(zip(rows, matches, strict=True)):
            t = len(row.prompt_ids) - n
            valid[j, prefix - n : prefix] = True
            valid[j, prefix + tail - t :] = True
            x[j, tail - t :] = torch.tensor(row.prompt_ids[n:], dtype=torch.long, device=dev)
            positions[j, tail - t :] = torch.arange(n, n + t, device=dev)
        if prefix:
            layers: KV = []
            ref = next(c for n, c in matches if c is not None)
            for i in range(ref.shape[0]):
                shape = (j_rows, ref.shape[2], prefix, ref.shape[4])
                k_all, v_all = ref.new_zeros(shape), ref.new_zeros(shape)
                for j, (n, cached) in enumerate(matches):
                    if n:
                        k_all[j, :, prefix - n :] = cached[i, 0]
                        v_all[j, :, prefix - n :] = cached[i, 1]
                layers.append((k_all, v_all))
            kw[b._cache_kw] = new_cache(layers)
        out = b.model(input_ids=x, attention_mask=valid.long(), position_ids=positions, use_cache=True, **kw)
        kv_all = cache_layers(b._cache_of(out))
        tokens, logprobs = self._select_tokens(out.logits[:, -1, :], [row for _, row in rows])
        result = []
        for j, (key, row) in enumerate(rows):
            idx = valid[j].nonzero()[:, 0]
            kv = [(k[j : j + 1].index_select(2, idx), v[j : j + 1].index_select(2, idx)) for k, v in kv_all]
            ids = row.prompt_ids
            if self.prefix_cache is not None:
                self.prefix_cache.insert(ids, [(k[0], v[0]) for k, v in kv])
            result.append((self._start_row(key, row, tokens[j], logprobs[j]), kv))
        return result

    def _prefill(self, key: int, row: _Row, match: tuple[int, Any] | None = None) -> tuple[_Live, KV]:
        """One row's uncached prompt in a forward pass of its own (``match``: its :meth:`_match`, when
        the caller has it)."""
        import torch

        b = self.backend
        ids = row.prompt_ids
        n, cached = self._match(row) if match is None else match
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
        return self._start_row(key, row, token[0], logprob[0]), kv

    def _select_tokens(self, logits: torch.Tensor, rows: list[_Row]) -> tuple[list[int], list[float]]:
        histories = [r.prompt_ids + r.response_ids for r in rows] \
            if any(r.params.repetition_penalty != 1.0 for r in rows) else None
        tokens, lps = select_tokens(logits, [r.params for r in rows], [r.generator for r in rows], histories)
        return tokens.tolist(), lps.tolist()

    def _join(self, joined: list[tuple[_Live, KV]]) -> None:
        """Copy the joining rows' states into the batch cache, right-aligned, widening it if needed."""
        import torch

        if self._cache is None and len(joined) == 1:  # nothing to align with: take the cache as it is
            live, kv = joined[0]
            self._cache, self._width, self._live = new_cache(kv, slack=self.slack_cache), live.n_kv, [live]
            if self.drafter is not None:
                self._valid = torch.ones((1, live.n_kv), dtype=torch.bool, device=self.backend.device)
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
        if self.drafter is not None:
            valid = torch.zeros((b_new, width), dtype=torch.bool, device=self.backend.device)
            if self._valid is not None and b_old:
                valid[:b_old, width - self._width :] = self._valid
            for j, (live, _) in enumerate(joined):
                valid[b_old + j, width - live.n_kv :] = True
            self._valid = valid
        self._width = width
        self._live.extend(live for live, _ in joined)

    def _decode(self) -> list[tuple[int, Any]]:
        import torch

        if self.drafter is not None:
            return self._decode_speculative()
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
        if self._valid is not None:
            # holes: the first column any kept row uses, not the longest row, bounds what is kept
            valid = self._valid[torch.tensor(keep, device=self._valid.device)]
            cut = int(valid.any(dim=0).nonzero()[0, 0])
            self._valid = valid[:, cut:]
            width = self._width - cut
        else:
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

    # -- speculative decoding ----------------------------------------------------------------------

    def _row_states(self, j: int, kv: KV) -> tuple[KV, int]:
        """Row ``j``'s states as ``(per layer (key, value) [kv_heads, T, head_dim], offset)`` for the
        prefix cache: a view when its columns are contiguous, else its valid columns gathered."""
        r = self._live[j]
        idx = self._valid[j].nonzero()[:, 0]
        if idx.numel() == r.n_kv and int(idx[0]) == self._width - r.n_kv:
            return [(k[j], v[j]) for k, v in kv], self._width - r.n_kv
        return [(k[j].index_select(1, idx), v[j].index_select(1, idx)) for k, v in kv], 0

    def _compact(self) -> None:
        """Rebuild the batch cache without holes: each row's valid columns right-aligned, as after a
        plain decode. Bounds the cache at twice its rows' states (+64) however many draft tokens were
        rejected: every rejected draft token leaves a hole, up to ``max_draft`` per row and pass."""
        import torch

        width = max(r.n_kv for r in self._live)
        kv, buffers = [], []
        idx = [self._valid[j].nonzero()[:, 0] for j in range(len(self._live))]
        for k, v in cache_layers(self._cache):
            shape = (len(self._live), k.shape[1], width + slack_columns(width), k.shape[3])
            kb, vb = k.new_zeros(shape), v.new_zeros(shape)
            for j, r in enumerate(self._live):
                kb[j, :, width - r.n_kv : width] = k[j].index_select(1, idx[j])
                vb[j, :, width - r.n_kv : width] = v[j].index_select(1, idx[j])
            kv.append((kb[:, :, :width], vb[:, :, :width]))
            buffers.append((kb, vb))
        self._cache = new_cache(kv, slack=self.slack_cache, buffers=buffers if self.slack_cache else None)
        n = torch.tensor([r.n_kv for r in self._live], device=self._valid.device)
        self._valid = torch.arange(width, device=self._valid.device)[None, :] >= (width - n)[:, None]
        self._width = width

    def _decode_speculative(self) -> list[tuple[int, Any]]:
        """One verify step: every row feeds its pending token and its draft (padded to the longest),
        accepts a prefix of the draft by the exact rule of :func:`~mx_agents.backends.drafts.verify_draft`
        and samples one token after it; columns it did not accept become holes (module docstring)."""
        import torch

        from mx_agents.backends.drafts import verify_draft

        b, drafter = self.backend, self.drafter
        live, width = self._live, self._width
        context = b._context
        drafts = []
        for r in live:
            room = r.row.budget - len(r.row.response_ids) - 1  # the row emits up to len(draft) + 1
            if context is not None:
                room = min(room, context - r.n_kv - 1)
            drafts.append(drafter.draft(r.own, room) if r.row.params.repetition_penalty == 1.0 else [])
        # how many columns this pass checks: the expected tokens per second of pass time, each row's
        # draft accepted token by token with its own rate, the pass cost fitted to this machine
        rates = [self._accept_prior if r.accept is None else r.accept for r in live]
        k_cols = self._pass_cost.best_width([len(d) for d in drafts], rates)
        drafts = [d[: k_cols - 1] for d in drafts]
        n = torch.tensor([r.n_kv for r in live], dtype=torch.long, device=b.device)
        pad = b._pad_id if b._pad_id is not None else 0
        tokens = torch.tensor([[r.pending, *d, *([pad] * (k_cols - 1 - len(d)))] for r, d in zip(live, drafts, strict=True)],
                              dtype=torch.long, device=b.device)
        # causal among the new columns; a row's padding columns come after its real ones
        mask = torch.cat([self._valid, torch.ones((len(live), k_cols), dtype=torch.bool, device=b.device)], dim=1).long()
        positions = n[:, None] + torch.arange(k_cols, device=b.device)[None, :]
        kw: dict[str, Any] = {b._keep_kw: k_cols} if b._keep_kw else {}
        t0 = time.perf_counter()
        out = b.model(input_ids=tokens, attention_mask=mask, position_ids=positions, use_cache=True,
                      **{b._cache_kw: self._cache}, **kw)
        logits = out.logits[:, -k_cols:, :].float()  # (forces the computation before the clock stops)
        self._pass_cost.observe(len(live) * k_cols, time.perf_counter() - t0)
        self._cache, self._width, self._last_width = b._cache_of(out), width + k_cols, len(live)
        new_valid = torch.zeros((len(live), k_cols), dtype=torch.bool, device=b.device)
        stats = self.stats
        done: list[tuple[int, Any]] = []
        keep: list[int] = []
        for j, (r, d) in enumerate(zip(live, drafts, strict=True)):
            if r.row.params.repetition_penalty != 1.0:
                hist = [r.row.prompt_ids + r.row.response_ids]
                toks, lps = select_tokens(logits[j, :1], [r.row.params], [r.row.generator], hist)
                emitted, lp = toks.tolist(), lps.tolist()
            else:
                emitted, lp = verify_draft(logits[j, : len(d) + 1], d, r.row.params, r.row.generator)
            stats.record_draft(len(d), len(emitted) - 1)
            if d:
                # tokens checked: the accepted ones, and the first rejected one unless all were taken
                seen = min(len(d), len(emitted))
                hits = len(emitted) - 1
                for x in [1.0] * hits + [0.0] * (seen - hits):
                    r.accept = (self._accept_prior if r.accept is None else r.accept) * 0.7 + 0.3 * x
                    self._accept_prior = self._accept_prior * 0.95 + 0.05 * x
            fed = 1  # the pending token's column
            for i, (tok, p) in enumerate(zip(emitted, lp, strict=True)):
                b._append(r.row, tok, p)
                r.own.extend([tok])
                if i < len(emitted) - 1:
                    fed += 1  # an accepted draft token: its column holds its state
                if r.row.finish_reason:
                    break
            new_valid[j, :fed] = True
            r.n_kv += fed
            r.pending = emitted[-1]
            if not r.row.finish_reason:
                keep.append(j)
        self._valid = torch.cat([self._valid, new_valid], dim=1)
        if self._width > 2 * max(r.n_kv for r in live) + 64:
            self._compact()  # holes are over half the batch cache: close them
        if len(keep) < len(live):
            kv = cache_layers(self._cache)
            for j, r in enumerate(live):
                if not r.row.finish_reason:
                    continue
                seq = r.row.prompt_ids + r.row.response_ids
                if self.prefix_cache is not None:
                    states, offset = self._row_states(j, kv)
                    self.prefix_cache.insert(seq[: r.n_kv], states, offset=offset)
                drafter.remember(seq)
                done.append((r.key, b._to_completion(r.row)))
            if keep:
                self._select(keep)
            else:
                self._live, self._cache, self._width, self._valid = [], None, 0, None
        return done
