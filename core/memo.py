"""Values an instance reuses for a few seconds instead of asking the store again: what every feed reads of all
readers' behaviour (clicks and showings per article, who is known) changes little from one feed to the next, and
reading it for each one made the feedback store's lock what concurrent feeds waited on."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Memo(Generic[K, V]):
    """Values by key, each kept `seconds` after it was read (0: none kept), at most `limit` of them."""

    def __init__(self, seconds: float, limit: int = 50_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds, self.limit, self.clock = seconds, limit, clock
        self._kept: dict[K, tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def many(self, keys: Sequence[K], read: Callable[[list[K]], Mapping[K, V]], default: V) -> dict[K, V]:
        """Each key's value: kept ones as they are, the others read together (`default` where `read` has none)."""
        now = self.clock()
        with self._lock:
            found = {k: kept[1] for k in keys if (kept := self._kept.get(k)) and now - kept[0] < self.seconds}
        missing = [k for k in dict.fromkeys(keys) if k not in found]
        if missing:
            got = read(missing)
            fetched = {k: got.get(k, default) for k in missing}
            self.keep(fetched, now)
            found.update(fetched)
        return found

    def one(self, key: K, read: Callable[[], V]) -> V:
        return self.many([key], lambda _: {key: read()}, None)[key]  # type: ignore[arg-type]

    def keep(self, values: Mapping[K, V], now: float | None = None) -> None:
        if self.seconds <= 0 or not values:
            return
        now = self.clock() if now is None else now
        with self._lock:
            if len(self._kept) + len(values) > self.limit:
                self._kept.clear()
            self._kept.update((k, (now, v)) for k, v in values.items())

    def lately(self, key: K) -> bool:
        """Whether `key` was marked within `seconds`; marks it now if not. "Done lately: skip it"."""
        now = self.clock()
        with self._lock:
            kept = self._kept.get(key)
            if kept and now - kept[0] < self.seconds:
                return True
        self.keep({key: True}, now)  # type: ignore[dict-item]
        return False
