"""What this process's feeds expose, as /metrics reports it (the same measures as `newsrank eval`'s exposure
table, agent.metrics.exposure): top-10 slots against candidates per category and source, each item's top-10
slots for the Gini coefficient, and the feeds with an item outside the reader's top categories."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Collection, Sequence

from agent import metrics
from core.records import Article

TOP = 10
MAX_LABELS = 200  # distinct categories or sources kept as labels; the rest count as "other"
MAX_ITEMS = 100_000  # items whose slots are counted (for the Gini coefficient)


class ExposureTally:
    def __init__(self) -> None:
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
                if a.id in self._slots or len(self._slots) < MAX_ITEMS:
                    self._slots[a.id] += 0
            self._slots.update(a.id for a in top if a.id in self._slots)

    def _label(self, kind: str, value: str) -> str:
        value = value or "unknown"
        known = self._offered[kind]
        return value if value in known or len(known) < MAX_LABELS else "other"

    def snapshot(self) -> metrics.Exposure:
        with self._lock:

            def side_by_side(kind: str) -> dict[str, tuple[float, float]]:
                top, offered = sum(self._top[kind].values()), sum(self._offered[kind].values())
                return {
                    label: (self._top[kind][label] / top if top else 0.0, n / offered)
                    for label, n in self._offered[kind].most_common()
                }

            return metrics.Exposure(
                self.feeds, side_by_side("category"), side_by_side("source"), metrics.gini(list(self._slots.values())),
                self._outside / self.feeds if self.feeds else 0.0,
                self._outside_slots[0] / self._outside_slots[1] if self._outside_slots[1] else 0.0,
            )  # fmt: skip
