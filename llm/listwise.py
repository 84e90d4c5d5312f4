"""Listwise ranking (RankGPT style): the LLM writes a permutation of a window of candidates, and a window
slides from the bottom of the list to the top so the best items bubble up. For strong models only: on the
small packaged model, pointwise P(Yes) is faster and no worse.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

BRACKETED = re.compile(r"\[(\d+)\]")
BARE = re.compile(r"\b(\d+)\b")


@dataclass(frozen=True)
class Permutation:
    order: tuple[int, ...]  # 0-based positions into the window, best first
    repaired: bool  # the model's answer needed fixing (unknown or repeated ids, or missing ones)


def parse_permutation(text: str, n: int) -> Permutation:
    """Read '[2] > [1] > [3]' (or looser '2, 1, 3') as a permutation of range(n), never failing.

    Unknown ids and repeats are dropped, missing ids are appended in their original order.
    """
    seen: list[int] = []
    dropped = False
    for token in BRACKETED.findall(text) or BARE.findall(text):
        number = int(token) - 1
        if 0 <= number < n and number not in seen:
            seen.append(number)
        else:
            dropped = True
    missing = [i for i in range(n) if i not in seen]
    return Permutation(tuple(seen + missing), repaired=dropped or bool(missing))


def sliding_windows(n: int, window: int, step: int) -> list[tuple[int, int]]:
    """(start, end) windows from the end of the list to the start, overlapping by window - step."""
    if n <= window:
        return [(0, n)]
    windows = []
    end = n
    while True:
        start = max(0, end - window)
        windows.append((start, end))
        if start == 0:
            return windows
        end -= step


def listwise_rank(
    n: int,
    rank_window: Callable[[Sequence[int]], Permutation],
    window: int = 10,
    step: int = 5,
) -> tuple[list[int], int]:
    """Rerank candidates 0..n-1. `rank_window` gets the candidate indices of one window and returns their
    permutation. Returns the final order and how many windows needed repair."""
    order = list(range(n))
    repairs = 0
    for start, end in sliding_windows(n, window, step):
        current = order[start:end]
        permutation = rank_window(current)
        repairs += permutation.repaired
        order[start:end] = [current[i] for i in permutation.order]
    return order, repairs


def rank_scores(order: Sequence[int]) -> list[float]:
    """Turn a ranking into per-candidate relevance in [0, 1] (top = 1, bottom = 0), in candidate order."""
    n = len(order)
    scores = [0.0] * n
    for rank, index in enumerate(order):
        scores[index] = 1.0 if n == 1 else 1.0 - rank / (n - 1)
    return scores
