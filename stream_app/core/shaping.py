"""List shaping after ranking: at most ``cap`` items per attribute in a list (a business rule as data), the
list refilled from the next candidates. Pure; one greedy pass per list over a few times k candidates."""

from __future__ import annotations

from typing import Callable, Sequence


def cap_per_group(values: Sequence[float], indices: Sequence[int], groups_of: Callable[[int], Sequence[int]],
                  cap: int, k: int) -> tuple[list[float], list[int]]:
    """The first ``k`` candidates (best first) such that no group (attribute) holds more than ``cap`` of them.

    An item with several capped attributes counts towards each and is skipped if any is full; an item
    without one is never skipped. Fewer than ``k`` come back only when the candidates run out."""
    taken: dict[int, int] = {}
    out_v: list[float] = []
    out_i: list[int] = []
    for v, i in zip(values, indices):
        groups = groups_of(i)
        if any(taken.get(g, 0) >= cap for g in groups):
            continue
        for g in groups:
            taken[g] = taken.get(g, 0) + 1
        out_v.append(v)
        out_i.append(i)
        if len(out_i) == k:
            break
    return out_v, out_i
