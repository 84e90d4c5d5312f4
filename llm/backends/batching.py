"""Micro-batching: concurrent `score` (or `generate`) calls from several threads become one call to the backend.

The HTTP app answers feed requests on a thread pool, and each request scores its own reader's candidates. Alone,
the calls queue one by one on the backend's lock; merged, several readers' candidates share forward passes (the
transformers backend packs them into one sequence, each reader's candidates after their prefix) and their
explanations share decoding steps. On one CPU core merged scoring serves about 1.1x the synchronous (`"fresh":
true`) feeds a second of unmerged calls, and merged generation about 1.2-1.3x (docs/BENCHMARKS.md, "Several
readers in one call" and "Micro-batching").

Leader/follower, no extra thread: the first call that finds no open batch opens one and leads it. It waits at
most `max_wait_ms` for companions (less once the batch is full), then for the backend to be free, and only then
closes the batch: calls that arrive while the backend is busy with the previous batch join the next one instead
of queueing behind it. The leader makes the one inner call and hands every caller its own slice of the results,
or the inner call's exception.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from core.errors import BackendError
from core.llm import Backend, GenerateRequest, Generation, ScoreRequest

R = TypeVar("R")
T = TypeVar("T")


@dataclass(eq=False)
class _Batch:
    kind: str  # "score" or "generate": the two never mix
    requests: list[Any] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)  # where each call's requests begin
    calls: int = 0
    closed: bool = False  # no more joiners: the requests are final
    full: threading.Event = field(default_factory=threading.Event)  # cuts the leader's collection window short
    done: threading.Event = field(default_factory=threading.Event)
    results: list[Any] = field(default_factory=list)
    errors: dict[int, BaseException] = field(default_factory=dict)  # by a call's start: what failed for it


class MicroBatcher:
    """A Backend that merges concurrent calls into shared backend calls; everything else goes to `inner`.

    `max_wait_ms` bounds the extra latency a lone call pays; `max_batch` bounds the requests (candidates or
    prompts) of one merged call (a call is never split, so a bigger call runs alone). `stats` counts, per kind
    (score, generate), calls, requests, batches and merged calls (those that rode in another call's batch)."""

    def __init__(self, inner: Backend, max_wait_ms: float = 5.0, max_batch: int = 256) -> None:
        if max_wait_ms < 0 or max_batch < 1:
            raise ValueError("max_wait_ms must be >= 0 and max_batch >= 1")
        self.inner = inner
        self.max_wait_s = max_wait_ms / 1000
        self.max_batch = max_batch
        self.stats: Counter[str] = Counter()
        self._lock = threading.Lock()  # guards _open and stats; held only for bookkeeping, never during a call
        self._busy = threading.Lock()  # held while a batch is in the backend: one batch at a time, either kind
        self._open: dict[str, _Batch] = {}  # per kind, the batch that calls may still join

    def __getattr__(self, name: str) -> Any:  # name, model, adapters, chat_prompt, load_adapter, warm, ...
        return getattr(self.inner, name)

    def counters(self) -> dict[str, float]:
        counted = ("calls", "requests", "batches", "merged_calls")
        with self._lock:
            mine = {f"{kind}_{n}": self.stats[f"{kind}_{n}"] for kind in ("score", "generate") for n in counted}
        return {**self.inner.counters(), **mine}

    def score(self, requests: Sequence[ScoreRequest]) -> list[float]:
        return self._merged("score", self.inner.score, requests)

    def generate(self, requests: Sequence[GenerateRequest]) -> list[Generation]:
        return self._merged("generate", self.inner.generate, requests)

    def _merged(self, kind: str, run: Callable[[list[R]], list[T]], requests: Sequence[R]) -> list[T]:
        if not requests:
            return []
        with self._lock:
            batch = self._open.get(kind)
            if batch is not None and len(batch.requests) + len(requests) > self.max_batch:
                batch.full.set()  # it runs as it is; this call opens the next batch
                batch = None
            leader = batch is None
            if batch is None:
                batch = self._open[kind] = _Batch(kind)
            start = len(batch.requests)
            batch.starts.append(start)
            batch.requests.extend(requests)
            batch.calls += 1
            if len(batch.requests) >= self.max_batch:
                batch.full.set()
            self.stats[f"{kind}_calls"] += 1
            self.stats[f"{kind}_requests"] += len(requests)
        if leader:
            self._lead(batch, run)
        else:
            batch.done.wait()
        if start in batch.errors:
            raise batch.errors[start]
        return batch.results[start : start + len(requests)]

    def _lead(self, batch: _Batch, run: Callable[[list[Any]], list[Any]]) -> None:
        try:
            batch.full.wait(self.max_wait_s)
            # the batch stays open while an earlier one runs: calls arriving meanwhile ride along
            with self._busy:
                self._close(batch)
                try:
                    batch.results = _checked(batch.kind, run, batch.requests)
                except Exception:
                    if len(batch.starts) == 1:
                        raise
                    # one call's bad request must not fail the calls merged with it: each runs alone again
                    batch.results = [None] * len(batch.requests)
                    for start, end in zip(batch.starts, [*batch.starts[1:], len(batch.requests)], strict=True):
                        try:
                            batch.results[start:end] = _checked(batch.kind, run, batch.requests[start:end])
                        except Exception as exc:
                            batch.errors[start] = exc
        except BaseException as exc:  # every caller of the batch gets it, the leader included
            batch.errors.update(dict.fromkeys(batch.starts, exc))
        finally:
            self._close(batch)  # also when the wait itself was interrupted
            batch.done.set()  # never leave a follower waiting

    def _close(self, batch: _Batch) -> None:
        with self._lock:
            if batch.closed:
                return
            batch.closed = True
            if self._open.get(batch.kind) is batch:
                del self._open[batch.kind]
            self.stats[f"{batch.kind}_batches"] += 1
            self.stats[f"{batch.kind}_merged_calls"] += batch.calls - 1


def _checked(kind: str, run: Callable[[list[Any]], list[Any]], requests: list[Any]) -> list[Any]:
    results = run(requests)
    if len(results) != len(requests):
        raise BackendError(f"{kind}: {len(results)} results for {len(requests)} requests")
    return results
