"""What feeds expose: top-10 slots against candidates per category and source, each item's top-10 slots for the
Gini coefficient, and the feeds with an item outside the reader's top categories. One counting class serves both
`/metrics` (this process's feeds, with bounded labels and items) and `newsrank eval`'s exposure table (unbounded).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from core import metrics
from core.records import Article

TOP = 10
MAX_LABELS = 200  # distinct categories or sources a live tally keeps as labels; the rest count as "other"
MAX_ITEMS = 100_000  # items whose slots a live tally counts (for the Gini coefficient)


@dataclass(frozen=True)
class Exposure:
    feeds: int
    category: dict[str, tuple[float, float]]  # label: (share of top slots, share among candidates), largest first
    source: dict[str, tuple[float, float]]
    gini: float  # of the top slots each candidate item got, over every item that was a candidate
    outside: float  # share of feeds with at least one item outside the reader's top categories
    outside_slots: float  # share of top slots given to items outside the reader's top categories


class ExposureTally:
    def __init__(self, max_labels: int | None = MAX_LABELS, max_items: int | None = MAX_ITEMS) -> None:
        """`max_labels`, `max_items`: bounds on what a long-lived tally keeps (None: everything)."""
        self.max_labels, self.max_items = max_labels, max_items
        self._lock = threading.Lock()
        self._top: dict[str, Counter[str]] = {"category": Counter(), "source": Counter()}
        self._offered: dict[str, Counter[str]] = {"category": Counter(), "source": Counter()}
        self._slots: Counter[str] = Counter()
        self.feeds = 0
        self._outside = 0  # feeds with an item outside the reader's top categories
        self._outside_slots = [0, 0]  # top slots outside them, top slots

    def add(self, candidates: Sequence[Article], shown: Sequence[Article], usual: Collection[str]) -> None:
        """One feed: its candidates, what it showed (best first) and the reader's top categories."""
        top = shown[:TOP]
        with self._lock:
            self.feeds += 1
            self._outside += any(a.category not in usual for a in top)
            self._outside_slots[0] += sum(a.category not in usual for a in top)
            self._outside_slots[1] += len(top)
            for kind in ("category", "source"):
                self._offered[kind].update(self._label(kind, getattr(a, kind)) for a in candidates)
                self._top[kind].update(self._label(kind, getattr(a, kind)) for a in top)
            for a in candidates:
                if a.id in self._slots or self.max_items is None or len(self._slots) < self.max_items:
                    self._slots[a.id] += 0
            self._slots.update(a.id for a in top if a.id in self._slots)

    def _label(self, kind: str, value: str) -> str:
        value = value or "unknown"
        known = self._offered[kind]
        return value if value in known or self.max_labels is None or len(known) < self.max_labels else "other"

    def snapshot(self) -> Exposure:
        with self._lock:

            def side_by_side(kind: str) -> dict[str, tuple[float, float]]:
                top, offered = sum(self._top[kind].values()), sum(self._offered[kind].values())
                return {
                    label: (self._top[kind][label] / top if top else 0.0, n / offered)
                    for label, n in sorted(self._offered[kind].items(), key=lambda kv: (-kv[1], kv[0]))
                }

            return Exposure(
                self.feeds, side_by_side("category"), side_by_side("source"), metrics.gini(list(self._slots.values())),
                self._outside / self.feeds if self.feeds else 0.0,
                self._outside_slots[0] / self._outside_slots[1] if self._outside_slots[1] else 0.0,
            )  # fmt: skip
