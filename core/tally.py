"""Counts of what the ranking loop and the background scorer did, for /metrics: by name and labels,
safe to add to from any thread. No HTTP here; serve/api.py renders them."""

from __future__ import annotations

import threading
from collections import Counter

Key = tuple[str, tuple[tuple[str, str], ...]]


class Tally:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[Key] = Counter()

    def add(self, name: str, n: float = 1, **labels: str) -> None:
        if n:
            with self._lock:
                self._counts[(name, tuple(sorted(labels.items())))] += n

    def get(self, name: str, **labels: str) -> float:
        with self._lock:
            return self._counts[(name, tuple(sorted(labels.items())))]

    def snapshot(self) -> dict[Key, float]:
        with self._lock:
            return dict(self._counts)
