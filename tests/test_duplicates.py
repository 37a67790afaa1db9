"""Near-duplicate search (multi-index hashing) against brute force; exact-duplicate groups."""

from __future__ import annotations

import time

import numpy as np
import pytest

from components.duplicates import exact_duplicate_groups, near_duplicate_pairs


def _random_hashes(rng: np.random.Generator, n: int, planted: int, max_flips: int) -> list[str]:
    """n random 64-bit hashes, `planted` of them copies of another with up to `max_flips` bits flipped."""
    values = [int(v) for v in rng.integers(0, 2**64, n, dtype=np.uint64)]
    for _ in range(planted):
        source, target = (int(i) for i in rng.choice(n, 2, replace=False))
        value = values[source]
        for bit in rng.choice(64, int(rng.integers(0, max_flips + 1)), replace=False):
            value ^= 1 << int(bit)
        values[target] = value
    return [f"{v:016x}" for v in values]


def _brute_force(hashes: list[str], max_distance: int) -> list[tuple[int, int, int]]:
    found = []
    for i, first in enumerate(hashes):
        for j in range(i + 1, len(hashes)):
            if first and hashes[j]:
                distance = (int(first, 16) ^ int(hashes[j], 16)).bit_count()
                if distance <= max_distance:
                    found.append((i, j, distance))
    return found


@pytest.mark.parametrize("max_distance", [0, 1, 3, 4, 7, 12])
def test_near_duplicate_pairs_equal_brute_force(max_distance):
    rng = np.random.default_rng(max_distance)
    hashes = _random_hashes(rng, 400, planted=120, max_flips=max_distance + 2)
    for blank in rng.choice(400, 20, replace=False):
        hashes[int(blank)] = ""  # unreadable images have no hash

    found = near_duplicate_pairs(hashes, max_distance)

    expected = _brute_force(hashes, max_distance)
    assert found == expected
    assert any(d == max_distance for _, _, d in expected) or max_distance > 7  # the boundary is exercised


def test_flips_at_band_edges_and_in_every_band_are_found():
    """With 5 bands (distance 4) of 13/13/13/13/12 bits, flip bits that straddle band boundaries."""
    base = 0x0123456789ABCDEF
    flips = [(0, 12, 13, 25), (26, 38, 39, 51), (52, 63), (12, 13), (63,), (0, 1, 2, 3), (25, 26, 51, 52)]
    hashes = [f"{base:016x}"]
    for bits in flips:
        value = base
        for bit in bits:
            value ^= 1 << bit
        hashes.append(f"{value:016x}")
    far = base ^ 0b11111  # 5 bits: just outside
    hashes.append(f"{far:016x}")

    found = {(i, j): d for i, j, d in near_duplicate_pairs(hashes, 4)}

    for k, bits in enumerate(flips, start=1):
        assert found[(0, k)] == len(bits)
    assert (0, len(hashes) - 1) not in found
    assert found == {(i, j): d for i, j, d in _brute_force(hashes, 4)}


def test_pairs_are_ordered_unique_and_skip_blanks():
    hashes = ["00000000000000ff", "", None, "00000000000000ff", "00000000000000fe", "  ", "ffffffffffffffff"]

    found = near_duplicate_pairs(hashes, 1)

    assert found == [(0, 3, 0), (0, 4, 1), (3, 4, 1)]
    assert near_duplicate_pairs(["", "abc"], 3) == []
    assert near_duplicate_pairs([], 3) == []


def test_uppercase_and_short_hashes_are_read_as_hex():
    assert near_duplicate_pairs(["00000000000000FF", "ff"], 0) == [(0, 1, 0)]


def test_bad_hashes_and_distances_are_rejected():
    with pytest.raises(ValueError, match=r"phash #1 'xyz' is not hexadecimal"):
        near_duplicate_pairs(["00", "xyz"], 2)
    with pytest.raises(ValueError, match="more than 64 bits"):
        near_duplicate_pairs(["0" * 17, "00"], 2)
    with pytest.raises(ValueError, match="between 0 and 64"):
        near_duplicate_pairs(["00", "01"], -1)


def test_distance_64_returns_every_pair():
    hashes = [f"{v:016x}" for v in (0, 2**64 - 1, 12345)]
    assert near_duplicate_pairs(hashes, 64) == _brute_force(hashes, 64)


def test_fast_on_100k_hashes():
    rng = np.random.default_rng(0)
    hashes = _random_hashes(rng, 100_000, planted=1_000, max_flips=4)

    start = time.perf_counter()
    found = near_duplicate_pairs(hashes, 4)
    elapsed = time.perf_counter() - start

    assert elapsed < 10, f"{elapsed:.1f} s"  # about 0.5 s on 2 shared cores
    assert len(found) >= 950  # planted pairs (a few planted copies overwrite each other)
    values = {i: int(hashes[i], 16) for pair in found for i in pair[:2]}
    assert all((values[i] ^ values[j]).bit_count() == d <= 4 for i, j, d in found)


def test_exact_duplicate_groups():
    digests = ["aa", "bb", "AA", "", None, "cc", "bb", "aa", " "]

    assert exact_duplicate_groups(digests) == [[0, 2, 7], [1, 6]]
    assert exact_duplicate_groups([]) == []
    assert exact_duplicate_groups(["x", "y"]) == []


def test_duplicate_clusters_link_chains_of_pairs():
    from components.duplicates import duplicate_clusters

    assert duplicate_clusters(6, [(4, 5, 1), (0, 2, 0), (2, 4, 3)]).tolist() == [0, 1, 0, 2, 0, 0]
    assert duplicate_clusters(3, []).tolist() == [0, 1, 2]
    assert duplicate_clusters(0, []).tolist() == []
