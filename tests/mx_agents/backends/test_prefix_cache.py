"""PrefixCache: longest-prefix lookup, shared storage of common prefixes, byte budget, LRU eviction."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from mx_agents.backends.prefix_cache import PrefixCache  # noqa: E402

LAYERS, HEADS, DIM = 2, 3, 4
TOKEN_BYTES = LAYERS * 2 * HEADS * DIM * 4  # float32 states of one token


def states(ids):
    """Per-layer (key, value) [heads, len(ids), dim] whose values encode (layer, kind, token id,
    position), so a returned slice shows exactly which token's state it is."""
    out = []
    for layer in range(LAYERS):
        pair = []
        for kind in range(2):
            t = torch.zeros(HEADS, len(ids), DIM)
            for pos, tok in enumerate(ids):
                t[:, pos, 0], t[:, pos, 1], t[:, pos, 2], t[:, pos, 3] = layer, kind, tok, pos
            pair.append(t)
        out.append(tuple(pair))
    return out


def expected(ids):
    return torch.stack([torch.stack(pair) for pair in states(ids)])


def test_match_returns_the_states_of_the_longest_cached_prefix():
    cache = PrefixCache(max_bytes=10**6)
    assert cache.match([1, 2, 3]) == (0, None)
    a = [1, 2, 3, 4, 5]
    assert cache.insert(a, states(a)) == 5
    n, kv = cache.match([1, 2, 3, 9, 9])
    assert n == 3 and torch.equal(kv, expected(a)[..., :3, :])
    n, kv = cache.match(a + [6, 7], limit=4)  # the caller keeps at least one token to compute
    assert n == 4 and torch.equal(kv, expected(a)[..., :4, :])
    assert cache.match([2, 1]) == (0, None)


def test_shared_prefixes_are_stored_once_and_branches_are_split():
    cache = PrefixCache(max_bytes=10**6)
    a, b = [1, 2, 3, 4, 5], [1, 2, 3, 7, 8, 9]
    cache.insert(a, states(a))
    assert cache.insert(b, states(b)) == 3  # only 7, 8, 9 are new
    assert cache.tokens == 8 and cache.bytes == 8 * TOKEN_BYTES
    for seq in (a, b):
        n, kv = cache.match(seq)
        assert n == len(seq) and torch.equal(kv, expected(seq))
    # A longer sequence through a split node: the states of its first part come from two nodes.
    c = b + [10, 11]
    assert cache.insert(c, states(c)) == 2
    n, kv = cache.match(c + [12])
    assert n == len(c) and torch.equal(kv, expected(c))


def test_insert_reads_the_last_positions_of_a_wider_tensor():
    """A finished row of a batch cache: its states end at the last column, after ``offset`` pad columns."""
    cache = PrefixCache(max_bytes=10**6)
    seq = [5, 6, 7]
    padded = [(torch.cat([torch.full((HEADS, 2, DIM), -1.0), k], 1), torch.cat([torch.full((HEADS, 2, DIM), -1.0), v], 1))
              for k, v in states(seq)]
    cache.insert(seq, padded, offset=2)
    n, kv = cache.match(seq)
    assert n == 3 and torch.equal(kv, expected(seq))


def test_byte_budget_evicts_least_recently_used_leaves_first():
    cache = PrefixCache(max_bytes=10 * TOKEN_BYTES)
    a, b, c = [1, 2, 3, 4], [1, 2, 5, 6], [9, 8, 7, 6]
    cache.insert(a, states(a))
    cache.insert(b, states(b))  # shares [1, 2]: 6 tokens stored
    cache.match(a)  # a is now more recent than b
    cache.insert(c, states(c))  # 10 tokens: at the budget, nothing evicted
    assert cache.tokens == 10
    d = [4, 4, 4]
    # 13 > 10 tokens: b's own branch [5, 6] (least recently used) goes, then a's [3, 4] (11 > 10 still);
    # the shared [1, 2] stays (used with a, after b), and so do the newer c and d.
    cache.insert(d, states(d))
    assert cache.tokens == 9 and cache.bytes == 9 * TOKEN_BYTES
    assert cache.match(b)[0] == 2 and cache.match(c)[0] == 4 and cache.match(d)[0] == 3
    n, kv = cache.match(a)
    assert n == 2 and torch.equal(kv, expected(a)[..., :2, :])
    cache.clear()
    assert cache.tokens == cache.bytes == 0 and cache.match(c) == (0, None)


def test_zero_budget_stores_nothing():
    cache = PrefixCache(max_bytes=0)
    assert cache.insert([1, 2], states([1, 2])) == 0 and cache.match([1, 2]) == (0, None)
    with pytest.raises(ValueError, match="max_bytes"):
        PrefixCache(max_bytes=-1)
