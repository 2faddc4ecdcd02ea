"""Near-duplicate search over perceptual hashes without comparing all pairs.

Multi-index hashing (Norouzi et al., 2012): split each b-bit hash into m chunks. If two
hashes differ in at most d bits, then by the pigeonhole principle some chunk differs in at
most floor(d/m) bits. So each hash only needs to be compared with the hashes whose chunk
lies within that small radius of its own chunk: a table lookup per probe instead of a scan.
The search is exact (it finds every pair within d), and `naive_pairs` is the all-pairs
reference it is tested and benchmarked against.
"""
from __future__ import annotations

from itertools import combinations
from math import comb

import numpy as np

MAX_TABLE_BITS = 24       # chunks up to this width get a dense bucket table
MAX_BLOCK_PAIRS = 20_000_000  # candidate pairs expanded at once (bounds memory)


def chunk_widths(bits: int, m: int) -> list[int]:
    return [bits // m + (1 if j < bits % m else 0) for j in range(m)]


def choose_chunks(n: int, bits: int, d: int) -> int:
    """The chunk count with the least expected work: table probes plus candidates to verify."""
    def cost(m: int) -> float:
        return sum(sum(comb(w, k) for k in range(d // m + 1)) * (1 + 3 * n / 2.0 ** w)
                   for w in chunk_widths(bits, m))
    feasible = [m for m in range(1, bits + 1) if max(chunk_widths(bits, m)) <= MAX_TABLE_BITS]
    return min(feasible, key=cost)


def flip_masks(width: int, radius: int) -> np.ndarray:
    """Every mask of `width` bits with at most `radius` bits set."""
    masks = [sum(1 << b for b in bits) for r in range(radius + 1) for bits in combinations(range(width), r)]
    return np.array(masks, dtype=np.uint64)


def _expand(lo: np.ndarray, count: np.ndarray, rows: np.ndarray):
    """For queries `rows` whose matches are sorted[lo:lo+count], all (query, sorted position) pairs."""
    total = int(count.sum())
    query = np.repeat(rows, count)
    start = np.repeat(lo - (np.cumsum(count) - count), count)
    return query, start + np.arange(total)


def _verify(hashes, query, cand, d):
    keep = query < cand
    query, cand = query[keep], cand[keep]
    close = np.bitwise_count(hashes[query] ^ hashes[cand]) <= d
    return np.stack([query[close], cand[close]], axis=1)


def near_pairs(hashes: np.ndarray, d: int, bits: int = 64) -> np.ndarray:
    """All index pairs (i < j) whose hashes differ in at most d bits, as an (k, 2) array."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    n, found = len(hashes), []
    if n < 2:
        return np.empty((0, 2), dtype=np.int64)
    m, shift = choose_chunks(n, bits, d), 0
    for width in chunk_widths(bits, m):
        keys = ((hashes >> np.uint64(shift)) & np.uint64((1 << width) - 1)).astype(np.int64)
        shift += width
        order = np.argsort(keys, kind="stable")
        counts = np.bincount(keys, minlength=1 << width)
        starts = np.cumsum(counts) - counts
        for mask in flip_masks(width, d // m).astype(np.int64):
            probe = keys ^ mask
            lo, count = starts[probe], counts[probe]
            for rows in _blocks(count):
                query, position = _expand(lo[rows], count[rows], rows)
                found.append(_verify(hashes, query, order[position], d))
    pairs = np.concatenate(found) if found else np.empty((0, 2), dtype=np.int64)
    return np.unique(pairs, axis=0) if len(pairs) else pairs


def _blocks(count: np.ndarray):
    """Split query rows so that no block expands into more than MAX_BLOCK_PAIRS candidates."""
    hits = np.flatnonzero(count)
    if len(hits) == 0:
        return
    cumulative = np.cumsum(count[hits])
    edges = np.searchsorted(cumulative, np.arange(MAX_BLOCK_PAIRS, cumulative[-1], MAX_BLOCK_PAIRS))
    yield from np.split(hits, np.unique(edges) + 1) if len(edges) else [hits]


def naive_pairs(hashes: np.ndarray, d: int, block: int = 2048) -> np.ndarray:
    """The all-pairs reference: O(n^2) comparisons, vectorised by blocks of rows."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    found = []
    for start in range(0, len(hashes), block):
        rows = hashes[start:start + block]
        dist = np.bitwise_count(rows[:, None] ^ hashes[None, start:])
        i, j = np.nonzero(dist <= d)
        keep = j > i  # j indexes from `start`, so this is the upper triangle
        found.append(np.stack([i[keep] + start, j[keep] + start], axis=1))
    return np.concatenate(found) if found else np.empty((0, 2), dtype=np.int64)
