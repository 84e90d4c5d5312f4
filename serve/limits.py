"""Limits that keep one client or one burst from taking the service: per-reader rates and the LLM's line.

Per-reader rate limits: a token bucket per key, in this process's memory.

One reader's client should not be able to flood the store or steer a signal with a burst of events. Each
instance limits on its own, so N instances behind a balancer allow up to N times the rate; the buckets are
bounded in number (the least recently used go first), so the limiter's memory is too.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

from core.errors import RateLimited


class RateLimiter:
    def __init__(self, per_minute: float, clock: Callable[[], float], max_keys: int = 100_000) -> None:
        self.capacity = per_minute  # a full minute's worth may come at once
        self.rate = per_minute / 60.0
        self.clock = clock
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key → (tokens, when)
        self._lock = threading.Lock()

    def take(self, counts: Mapping[str, int], what: str = "events") -> None:
        """Take `counts[key]` tokens for every key, all or none; RateLimited if any key has too few."""
        with self._lock:
            now = self.clock()
            levels = {key: self._level(key, now) for key in counts}
            short = {key: n - levels[key] for key, n in counts.items() if n > levels[key]}
            if short:
                key, missing = max(short.items(), key=lambda kv: kv[1])
                raise RateLimited(
                    f"too many {what} for {key!r}: at most {self.capacity:.0f} a minute", missing / self.rate
                )
            for key, n in counts.items():
                self._buckets[key] = (levels[key] - n, now)
                self._buckets.move_to_end(key)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)

    def _level(self, key: str, now: float) -> float:
        tokens, when = self._buckets.get(key, (self.capacity, now))
        return min(self.capacity, tokens + (now - when) * self.rate)


class ModelSlots:
    """Admission to the LLM's work: at most `concurrent` requests at it, at most `waiting` more in line, each
    waiting at most `wait_seconds`. Past the line, or past the wait, a request is turned away with RateLimited
    (HTTP 429 and Retry-After) instead of queueing without bound behind the model."""

    def __init__(self, concurrent: int, waiting: int, wait_seconds: float) -> None:
        self._slots = threading.BoundedSemaphore(concurrent)
        self._line = threading.BoundedSemaphore(concurrent + waiting)
        self.wait_seconds = wait_seconds

    @contextmanager
    def slot(self, what: str) -> Iterator[None]:
        if not self._line.acquire(blocking=False):
            raise RateLimited(f"too many {what} requests waiting for the model; try again shortly", self.wait_seconds)
        try:
            if not self._slots.acquire(timeout=self.wait_seconds):
                raise RateLimited(
                    f"the model is busy: no {what} slot within {self.wait_seconds:g} s", self.wait_seconds
                )
            try:
                yield
            finally:
                self._slots.release()
        finally:
            self._line.release()
