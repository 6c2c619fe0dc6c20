"""Split decode sequences, sorted by context length, into a few groups that pad little.

Each group gathers its sequences' KV padded to the group's longest context. One group per step
pads every short sequence to the longest one; a group per sequence multiplies per-layer kernel
launches. A small dynamic program picks the split with the lowest estimated cost.
"""

from __future__ import annotations

from collections.abc import Sequence

MAX_GROUPS = 4
# Measured on CPU: one extra group costs about as much as gathering and attending over this many
# padded (sequence, block) pairs.
GROUP_OVERHEAD_BLOCKS = 40


def split_into_groups(block_counts: Sequence[int]) -> list[tuple[int, int]]:
    """``block_counts`` sorted ascending; returns ``[(start, end), ...]`` covering every index."""
    n = len(block_counts)
    if n == 0:
        return []
    inf = float("inf")
    # best[k][i]: lowest cost of covering the first i sequences with k groups; the last group of
    # a prefix ending at i pads to block_counts[i - 1] because the counts are sorted.
    best = [[inf] * (n + 1) for _ in range(MAX_GROUPS + 1)]
    cut = [[0] * (n + 1) for _ in range(MAX_GROUPS + 1)]
    best[0][0] = 0.0
    for k in range(1, MAX_GROUPS + 1):
        for i in range(1, n + 1):
            for j in range(k - 1, i):
                if best[k - 1][j] == inf:
                    continue
                cost = best[k - 1][j] + (i - j) * block_counts[i - 1] + GROUP_OVERHEAD_BLOCKS
                if cost < best[k][i]:
                    best[k][i] = cost
                    cut[k][i] = j
    groups_used = min(range(1, MAX_GROUPS + 1), key=lambda k: best[k][n])
    bounds: list[tuple[int, int]] = []
    end = n
    for k in range(groups_used, 0, -1):
        start = cut[k][end]
        bounds.append((start, end))
        end = start
    return bounds[::-1]
