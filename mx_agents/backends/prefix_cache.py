"""A prefix cache of attention key/value states, keyed by token ids (a radix tree, as SGLang's).

Why: in a MetaAgent-X rollout most prompt tokens were computed before. A sub-agent's next turn is its
previous prompt plus its reply plus a new user message; the N executions of one design share the
system prompt, the task and the script's instructions; the M designs of a task share the designer
prompt. The key/value states of a token depend only on the tokens before it (causal attention,
absolute positions), so the states computed for any sequence serve every later sequence that starts
with the same tokens: only the rest needs a forward pass.

Layout: every node holds the states of the tokens on the edge into it, one tensor
``[layers, 2 (key, value), kv_heads, tokens, head_dim]``; a lookup concatenates the segments along
the path of the longest match. Nodes are split where sequences diverge, so a shared prefix is stored
once. Memory is bounded by ``max_bytes``: least recently used leaves are evicted first (a node's
ancestors are used whenever it is, so they outlive it). Not thread-safe: its owner (the engine,
which runs one step at a time) serialises access. States computed with other weights are wrong:
:meth:`PrefixCache.clear` on every weight update.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    # Per layer (key, value), each [kv_heads, tokens, head_dim] for one sequence (no batch dim).
    LayerKV = Sequence[tuple[torch.Tensor, torch.Tensor]]


@dataclass(eq=False)
class _Node:
    key: list[int]  # token ids on the edge into this node
    kv: torch.Tensor | None  # [layers, 2, kv_heads, len(key), head_dim]; None at the root
    parent: _Node | None
    children: dict[int, _Node] = field(default_factory=dict)
    last_used: int = 0


def _common(a: Sequence[int], b: Sequence[int], start_b: int, limit: int) -> int:
    """Length of the common prefix of ``a`` and ``b[start_b:limit]``."""
    n = min(len(a), limit - start_b)
    k = 0
    while k < n and a[k] == b[start_b + k]:
        k += 1
    return k


class PrefixCache:
    """Key/value states of token-id prefixes, at most ``max_bytes`` of them; see the module docstring."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.root = _Node([], None, None)
        self.tokens = 0  # tokens stored
        self.bytes = 0  # bytes of the stored states
        self._tick = 0

    def clear(self) -> None:
        self.root = _Node([], None, None)
        self.tokens = self.bytes = 0

    def match(self, ids: Sequence[int], limit: int | None = None) -> tuple[int, torch.Tensor | None]:
        """The longest cached prefix of ``ids[:limit]``: ``(n, kv)`` with ``kv`` of shape
        ``[layers, 2, kv_heads, n, head_dim]`` (possibly a view of the cache's storage: read it, do not
        write it), or ``(0, None)``."""
        import torch

        limit = len(ids) if limit is None else min(limit, len(ids))
        self._tick += 1
        node, n, segments = self.root, 0, []
        while n < limit:
            child = node.children.get(int(ids[n]))
            if child is None:
                break
            k = _common(child.key, ids, n, limit)
            child.last_used = self._tick
            segments.append(child.kv if k == len(child.key) else child.kv[..., :k, :])  # type: ignore[index]
            n += k
            if k < len(child.key):
                break
            node = child
        if not segments:
            return 0, None
        return n, torch.cat(segments, dim=-2) if len(segments) > 1 else segments[0]

    def insert(self, ids: Sequence[int], kv: LayerKV, *, offset: int = 0) -> int:
        """Store the states of ``ids``; ``kv[layer] = (key, value)``, each ``[kv_heads, T, head_dim]``
        whose last ``len(ids)`` positions (from ``offset`` on) belong to ``ids``. Only the part not
        cached yet is copied. Returns the tokens added (after eviction, possibly fewer remain)."""
        import torch

        if self.max_bytes == 0 or not ids:
            return 0
        self._tick += 1
        node, n = self.root, 0
        added = 0
        while n < len(ids):
            child = node.children.get(int(ids[n]))
            if child is None:
                seg = torch.stack([torch.stack((k[:, offset + n : offset + len(ids)], v[:, offset + n : offset + len(ids)]))
                                   for k, v in kv])
                leaf = _Node([int(t) for t in ids[n:]], seg, node, last_used=self._tick)
                node.children[leaf.key[0]] = leaf
                self.tokens += len(leaf.key)
                self.bytes += seg.numel() * seg.element_size()
                added = len(leaf.key)
                break
            k = _common(child.key, ids, n, len(ids))
            if k < len(child.key):
                child = self._split(child, k)
            child.last_used = self._tick
            n += k
            node = child
        self._evict()
        return added

    def _split(self, child: _Node, k: int) -> _Node:
        """Cut ``child``'s edge after ``k`` tokens; returns the new middle node (its first part)."""
        assert child.parent is not None and child.kv is not None and 0 < k < len(child.key)
        mid = _Node(child.key[:k], child.kv[..., :k, :].clone(), child.parent, last_used=child.last_used)
        child.parent.children[mid.key[0]] = mid
        child.key, child.kv, child.parent = child.key[k:], child.kv[..., k:, :].clone(), mid
        mid.children[child.key[0]] = child
        return mid

    def _evict(self) -> None:
        if self.bytes <= self.max_bytes:
            return
        leaves = []
        stack = [self.root]
        while stack:
            node = stack.pop()
            stack.extend(node.children.values())
            if not node.children and node is not self.root:
                leaves.append(node)
        # Oldest first; a parent left childless becomes a leaf and may go in the same pass.
        heap = [(leaf.last_used, id(leaf), leaf) for leaf in leaves]
        heapq.heapify(heap)
        while self.bytes > self.max_bytes and heap:
            _, _, leaf = heapq.heappop(heap)
            parent = leaf.parent
            assert parent is not None and leaf.kv is not None
            del parent.children[leaf.key[0]]
            self.tokens -= len(leaf.key)
            self.bytes -= leaf.kv.numel() * leaf.kv.element_size()
            if parent is not self.root and not parent.children:
                heapq.heappush(heap, (parent.last_used, id(parent), parent))

    def __len__(self) -> int:
        return self.tokens
