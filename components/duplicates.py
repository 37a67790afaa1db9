"""Exact and near-duplicate images: sha256 groups and pHash pairs within a Hamming distance.

``near_duplicate_pairs`` is exact (it returns every pair within the distance,
and only those) and fast on 100,000 hashes. It uses multi-index hashing (Norouzi, Punjani and
Fleet, "Fast Search in Hamming Space with Multi-Index Hashing", CVPR 2012) with
the pigeonhole principle: split the 64 bits into ``max_distance + 1`` bands;
two hashes that differ in at most ``max_distance`` bits agree on at least one
whole band. So the candidates are the pairs that share a band value (found by
sorting each band), and each candidate is verified with a popcount of the XOR.
A pair that shares several bands is kept only at the first one, so each pair
comes out once.

Cost: with ``n`` uniformly spread hashes and ``b = max_distance + 1`` bands of
``64 / b`` bits, there are about ``b * n^2 / 2^(64/b+1)`` candidates: about
4 million for n = 100,000 at distance 4, about 35 million at distance 6, and
quickly more beyond (every band of 6 bits or fewer matches 1 pair in 64).
Real radiographs are less spread than random hashes, so expect more. When the
candidates would outnumber all pairs, a blocked brute force is used instead
(same result).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

HASH_BITS = 64
# Pairs generated per vectorised chunk: bounds memory (about 40 bytes a pair).
_CHUNK_PAIRS = 4_000_000


def parse_phashes(phashes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Parse hex hashes into 64-bit integers, skipping empty ones.

    Args:
        phashes: hex strings of up to 64 bits (16 hex digits); "", None and NaN are skipped.

    Returns:
        (positions, values): int64 array of the positions in `phashes` of the non-empty hashes,
        and uint64 array of their values, both of shape (k,).

    Raises:
        ValueError: a hash is not hexadecimal or has more than 64 bits; the message names its position.
    """
    positions: list[int] = []
    values: list[int] = []
    for index, text in enumerate(phashes):
        if text is None or (isinstance(text, float) and text != text):
            continue
        text = str(text).strip()
        if not text:
            continue
        try:
            value = int(text, 16)
        except ValueError:
            raise ValueError(f"phash #{index} {text!r} is not hexadecimal") from None
        if len(text) > HASH_BITS // 4 or value < 0:
            raise ValueError(f"phash #{index} {text!r} has more than {HASH_BITS} bits")
        positions.append(index)
        values.append(value)
    return np.asarray(positions, dtype=np.int64), np.asarray(values, dtype=np.uint64)


def _bands(count: int) -> list[tuple[int, np.uint64]]:
    """(shift, mask) of `count` contiguous bands covering the 64 bits, widths differing by at most 1."""
    widths = [HASH_BITS // count + (1 if band < HASH_BITS % count else 0) for band in range(count)]
    bands, shift = [], 0
    for width in widths:
        bands.append((shift, np.uint64((1 << width) - 1)))
        shift += width
    return bands


def _groups(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(order that sorts keys, for each sorted position the end of its run of equal keys)."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.flatnonzero(np.diff(sorted_keys)) + 1
    ends = np.append(starts, len(keys))
    sizes = np.diff(np.concatenate(([0], ends)))
    return order, np.repeat(ends, sizes)


def _pairs_in_runs(run_end: np.ndarray):
    """Yield (left, right) sorted positions of all pairs inside runs of equal keys, in chunks."""
    n = len(run_end)
    partners = run_end - np.arange(n) - 1  # positions after p in p's run
    cumulative = np.cumsum(partners)
    total = int(cumulative[-1]) if n else 0
    start = 0
    while start < n and total:
        done_before = int(cumulative[start - 1]) if start else 0
        stop = int(np.searchsorted(cumulative, done_before + _CHUNK_PAIRS, side="right"))
        stop = max(stop, start + 1)
        counts = partners[start:stop]
        if counts.sum():
            left = np.repeat(np.arange(start, stop), counts)
            offsets = np.arange(len(left)) - np.repeat(np.cumsum(counts) - counts, counts)
            yield left, left + 1 + offsets
        start = stop


def _candidate_count(values: np.ndarray, bands: list[tuple[int, np.uint64]]) -> int:
    total = 0
    for shift, mask in bands:
        _, counts = np.unique((values >> np.uint64(shift)) & mask, return_counts=True)
        total += int((counts * (counts - 1) // 2).sum())
    return total


def _brute_force(values: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = len(values)
    found_i, found_j, found_d = [], [], []
    block = max(1, _CHUNK_PAIRS // max(n, 1))
    for first in range(0, n, block):
        rows = np.arange(first, min(first + block, n))
        distance = np.bitwise_count(values[rows, None] ^ values[None, :])
        i, j = np.nonzero((distance <= max_distance) & (np.arange(n)[None, :] > rows[:, None]))
        found_i.append(rows[i])
        found_j.append(j)
        found_d.append(distance[i, j])
    if not found_i:
        return (np.empty(0, np.int64),) * 3
    return np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_d).astype(np.int64)


def _multi_index(values: np.ndarray, bands: list[tuple[int, np.uint64]], max_distance: int):
    found_i, found_j, found_d = [], [], []
    for band, (shift, mask) in enumerate(bands):
        order, run_end = _groups((values >> np.uint64(shift)) & mask)
        for left, right in _pairs_in_runs(run_end):
            a, b = order[left], order[right]
            xor = values[a] ^ values[b]
            distance = np.bitwise_count(xor)
            keep = distance <= max_distance
            # Report a pair only at the first band it shares.
            for earlier_shift, earlier_mask in bands[:band]:
                keep &= ((xor >> np.uint64(earlier_shift)) & earlier_mask) != 0
            found_i.append(np.minimum(a, b)[keep])
            found_j.append(np.maximum(a, b)[keep])
            found_d.append(distance[keep].astype(np.int64))
    if not found_i:
        return (np.empty(0, np.int64),) * 3
    return np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_d)


def near_duplicate_pairs(phashes: Sequence[str], max_distance: int) -> list[tuple[int, int, int]]:
    """Find every pair of hashes within a Hamming distance (exact, see the module docstring).

    Args:
        phashes: hex strings of up to 64 bits (16 hex digits); "", None and NaN are skipped.
        max_distance: the largest Hamming distance in bits (0..64) that makes a pair.

    Returns:
        Every (i, j, distance) with i < j positions in `phashes` whose hashes differ in at most
        `max_distance` bits, sorted by (i, j).

    Raises:
        ValueError: `max_distance` is outside 0..64, or a hash is malformed (see parse_phashes).
    """
    if not 0 <= int(max_distance) <= HASH_BITS:
        raise ValueError(f"max_distance must be between 0 and {HASH_BITS}, got {max_distance}")
    max_distance = int(max_distance)
    positions, values = parse_phashes(phashes)
    if len(values) < 2:
        return []
    bands = _bands(min(max_distance + 1, HASH_BITS))
    n = len(values)
    if max_distance >= HASH_BITS or _candidate_count(values, bands) > n * (n - 1) // 2:
        i, j, d = _brute_force(values, max_distance)
    else:
        i, j, d = _multi_index(values, bands, max_distance)
    i, j = positions[i], positions[j]
    order = np.lexsort((j, i))
    return [(int(a), int(b), int(c)) for a, b, c in zip(i[order], j[order], d[order], strict=False)]


def exact_duplicate_groups(sha256s: Sequence[str]) -> list[list[int]]:
    """Group the positions of equal digests (exact duplicate files).

    Args:
        sha256s: hex digests, compared case-insensitively; "", None and NaN are skipped.

    Returns:
        The groups of two or more positions (ascending) that share a digest, ordered by their first position.
    """
    seen: dict[str, list[int]] = {}
    for index, digest in enumerate(sha256s):
        if digest is None or (isinstance(digest, float) and digest != digest):
            continue
        digest = str(digest).strip().lower()
        if digest:
            seen.setdefault(digest, []).append(index)
    return [group for group in seen.values() if len(group) > 1]


def duplicate_clusters(n: int, pairs: Sequence[Sequence[int]]) -> np.ndarray:
    """Connected components of `n` items linked by pairs (union-find with path halving).

    Meant for splitting: images linked by near-duplicate pairs (possibly under
    different patient ids) should land in one split, like one patient's images.

    Args:
        n: number of items (positions 0..n-1).
        pairs: (i, j, ...) sequences whose first two entries link items i and j (extra
            entries, e.g. near_duplicate_pairs' distance, are ignored).

    Returns:
        int64 array of shape (n,): each item's cluster id, 0..k-1 numbered in order of each
        cluster's first item.
    """
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for pair in pairs:
        a, b = root(int(pair[0])), root(int(pair[1]))
        if a != b:
            parent[max(a, b)] = min(a, b)
    roots = [root(i) for i in range(n)]
    ids: dict[int, int] = {}
    return np.array([ids.setdefault(r, len(ids)) for r in roots], dtype=np.int64)
