"""Background scorer threads: in `newsrank serve` (SCORER_THREADS, one by default) or on their own in
`newsrank worker`, for deployments that keep the API and the LLM's work apart. The work itself is
feed/background_scorer.py; this runs it until told to stop, waking at once when this process queues work and otherwise
polling the shared queue (another instance may have queued it). A worker also deletes, hourly, the events and
ranking records past their retention."""

from __future__ import annotations

import logging
import threading
import time

from config.settings import Settings
from core.errors import StoreUnavailable
from core.stores import FeedbackStore
from feed.background_scorer import Scorer
from feed.recommender import Recommender
from serve.jobs import INSTANCE
from serve.learning import LearningLoop

log = logging.getLogger("newsrank.worker")
POLL_SECONDS = 0.5  # how often an idle worker looks at the shared queue
RETENTION_SECONDS = 3600.0  # how often a worker deletes what is past its retention


def enforce_retention(feedback: FeedbackStore, settings: Settings, now: float) -> dict[str, int]:
    """Delete the events and ranking records older than their retention (settings), and erased readers'
    tombstones older than their hold; how many events and rankings."""

    def cutoff(days: float | None) -> float | None:
        return None if days is None else now - days * 86400

    return feedback.forget_before(cutoff(settings.events_retention_days), cutoff(settings.rankings_retention_days),
                                  now - settings.erasure_hold_hours * 3600)  # fmt: skip


class ScoringWorkers:
    def __init__(
        self, recommender: Recommender, threads: int, name: str = INSTANCE, loop: LearningLoop | None = None
    ) -> None:
        self.recommender = recommender
        self.scorers = [Scorer(recommender, f"{name}/{i}") for i in range(threads)]
        self.loop = loop  # the learning loop, looked at every LOOP_CHECK_SECONDS
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._next_sweep = 0.0
        self._next_retention = 0.0
        self._next_loop = 0.0
        self._sweep_lock = threading.Lock()

    def start(self) -> None:
        for scorer in self.scorers:
            thread = threading.Thread(target=self._run, args=(scorer,), name=f"scorer {scorer.worker}", daemon=True)
            thread.start()
            self._threads.append(thread)
        if self.scorers:
            log.info("%d background scorer thread(s) started", len(self.scorers))

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the tasks in hand (a task cut short would be retried by another worker anyway)."""
        self._stop.set()
        self.recommender.scoring_asked.set()
        for thread in self._threads:
            thread.join(timeout)

    def run_until_idle(self) -> int:
        """Sweep once, then do tasks in this thread until none is left (tests, `newsrank worker --until-idle`).
        Returns how many tasks were done."""
        self.scorers[0].sweep()
        done = 0
        while self.scorers[0].run_once() is not None:
            done += 1
        return done

    def _run(self, scorer: Scorer) -> None:
        while not self._stop.is_set():
            try:
                self._maybe_sweep(scorer)
                if scorer.run_once() is not None:
                    continue
            except StoreUnavailable as exc:
                log.warning("the feedback store did not answer the scorer: %s", exc)
            except Exception:
                log.exception("the background scorer failed; it goes on")
            asked = self.recommender.scoring_asked
            if asked.wait(POLL_SECONDS):
                asked.clear()

    def _maybe_sweep(self, scorer: Scorer) -> None:
        with self._sweep_lock:  # one thread of this process sweeps; the others go on working
            if time.monotonic() < self._next_sweep:
                return
            self._next_sweep = time.monotonic() + self.recommender.settings.scoring_sweep_seconds
            retain = time.monotonic() >= self._next_retention
            if retain:
                self._next_retention = time.monotonic() + RETENTION_SECONDS
            learn = self.loop is not None and time.monotonic() >= self._next_loop
            if learn:
                self._next_loop = time.monotonic() + self.recommender.settings.loop_check_seconds
        scorer.sweep()
        if learn:
            self.loop.tick()
        if retain:
            r = self.recommender
            deleted = enforce_retention(r.feedback, r.settings, r.clock())
            if any(deleted.values()):
                log.info("retention: deleted %d events and %d ranking records", deleted["events"], deleted["rankings"])
