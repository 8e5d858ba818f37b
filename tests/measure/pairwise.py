"""A small deterministic all-pairs (2-way covering) generator for the oracle tests.

Every value of every factor appears together with every value of every other factor in
at least one row, with far fewer rows than the full product.  Greedy: each new row
starts from the first uncovered pair and fills the other factors with the value that
covers the most still-uncovered pairs (ties: the first value), so the rows are stable
from run to run.
"""

from __future__ import annotations

from itertools import combinations


def all_pairs(factors: dict[str, list]) -> set[tuple]:
    names = list(factors)
    return {((a, i), (b, j))
            for a, b in combinations(range(len(names)), 2)
            for i in range(len(factors[names[a]]))
            for j in range(len(factors[names[b]]))}


def covered_pairs(row: dict[int, int]) -> set[tuple]:
    keys = sorted(row)
    return {((a, row[a]), (b, row[b])) for a, b in combinations(keys, 2)}


def pairwise(factors: dict[str, list]) -> list[dict]:
    names = list(factors)
    uncovered = all_pairs(factors)
    rows: list[dict[int, int]] = []
    while uncovered:
        (a, i), (b, j) = min(uncovered)
        row = {a: i, b: j}
        for k in range(len(names)):
            if k in row:
                continue
            best, best_gain = 0, -1
            for v in range(len(factors[names[k]])):
                gain = sum(1 for m, w in row.items()
                           if ((min(k, m), v if k < m else w), (max(k, m), w if k < m else v)) in uncovered)
                if gain > best_gain:
                    best, best_gain = v, gain
            row[k] = best
        uncovered -= covered_pairs(row)
        rows.append(row)
    return [{names[k]: factors[names[k]][v] for k, v in sorted(row.items())} for row in rows]
