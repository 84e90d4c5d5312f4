"""Limits that keep one client or one burst from taking the service: per-reader and per-key rates, and the LLM's
line with a share per key.

Per-reader rate limits: a token bucket per key, in this process's memory.

One reader's client should not be able to flood the store or steer a signal with a burst of events. Each
instance limits on its own, so N instances behind a balancer allow up to N times the rate; the buckets are
bounded in number (the least recently used go first), so the limiter's memory is too.
"""

from __future__ import annotations

import asyncio
import functools
import math
import threading
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from core.errors import RateLimited

T = TypeVar("T")


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
    """Admission to the LLM's work: at most `concurrent` requests at it and `waiting` more in line, each waiting at
    most `wait_seconds`; one client key holds at most `key_share` of the line and of the slots. Past the line, a
    key's share or the wait, a request is turned away with RateLimited (HTTP 429 and Retry-After).

    Waiting happens in the event loop, never in a thread, and the work itself runs on the model's own threads
    (`run`): a stalled model holds those alone, never the threads that plain feeds, events and health checks use.
    """

    def __init__(self, concurrent: int, waiting: int, wait_seconds: float, key_share: float = 1.0) -> None:
        self.concurrent = concurrent
        self.line = concurrent + waiting
        self.key_line = max(1, math.floor(key_share * self.line))
        self.key_concurrent = max(1, math.ceil(key_share * concurrent))
        self.wait_seconds = wait_seconds
        self._pool = ThreadPoolExecutor(concurrent, thread_name_prefix="model")
        self._in_line: Counter[str] = Counter()  # per key: requests in line or at the model
        self._slots: asyncio.Semaphore | None = None  # made in the event loop, at first use
        self._key_slots: dict[str, asyncio.Semaphore] = {}  # per configured key: as few as there are keys

    @asynccontextmanager
    async def slot(self, what: str, key: str = "") -> AsyncIterator[None]:
        if sum(self._in_line.values()) >= self.line:
            raise RateLimited(f"too many {what} requests waiting for the model; try again shortly", self.wait_seconds)
        if self._in_line[key] >= self.key_line:
            raise RateLimited(f"this key has {self._in_line[key]} requests at the model or waiting for it, its share;"
                              " try again shortly", self.wait_seconds)  # fmt: skip
        self._in_line[key] += 1
        slots = self._slots = self._slots or asyncio.Semaphore(self.concurrent)
        mine = self._key_slots.setdefault(key, asyncio.Semaphore(self.key_concurrent))
        held: list[asyncio.Semaphore] = []
        try:
            try:
                async with asyncio.timeout(self.wait_seconds):
                    for semaphore in (mine, slots):  # the key's own share first: it never blocks other keys
                        await semaphore.acquire()
                        held.append(semaphore)
            except TimeoutError:
                raise RateLimited(
                    f"the model is busy: no {what} slot within {self.wait_seconds:g} s", self.wait_seconds
                ) from None
            yield
        finally:
            for semaphore in held:
                semaphore.release()
            self._in_line[key] -= 1

    async def run(self, work: Callable[..., T], *args: Any) -> T:
        """Run model work on the model's own threads (call it inside `slot`)."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(work, *args))
