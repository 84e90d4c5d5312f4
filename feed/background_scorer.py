"""The background scorer: the LLM's work done ahead of the requests that use it.

Feeds read the LLM's relevance from the feedback store (feed/recommender.py); this keeps it fresh. Its work comes
from one queue in the feedback store, shared by every instance and worker:

- `reader` tasks: score a reader's candidates under their current profile. Asked for by a feed that found a
  score missing or stale, by events and preference changes, for every active reader when new articles arrive
  (`Recommender.articles_arrived`), and by the sweep: active readers whose scores are older than the TTL.
  With `cover_first` (the default) a reader task scores only the candidates without a score, and asks for a
  `refresh` task to rescore those scored under an earlier profile: every reader's missing scores come before
  anyone's stale ones, since a stale score ranks about as well as a fresh one and a missing one not at all.
- `explain` tasks: rewrite the template explanations of a reader's latest ranking with the LLM; a rewrite that
  keeps every fact the template names replaces it on the ranking record, where `why` and chat read it.

A task asked for again while it waits is coalesced (ten clicks in a row, one rescoring); the queue is bounded
(explanations are dropped first, then refreshes, then the least recently active readers' tasks, which the sweep
asks for again); missing scores go before stale ones, and both before explanations, the most recently active
first; readers idle for longer than `scoring_active_hours` are not swept. A claimed task belongs to one worker
until its lease runs out, so two workers never score the same reader at once; a task that failed (the LLM down)
is retried when its lease runs out.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import replace

from core.errors import NotFound
from core.records import ScoringTask
from feed import explain
from feed.recommender import Recommender

log = logging.getLogger("newsrank.scorer")


class Scorer:
    def __init__(self, recommender: Recommender, worker: str) -> None:
        self.recommender = recommender
        self.feedback = recommender.feedback
        self.settings = recommender.settings
        self.worker = worker  # this worker's name in the queue's claims

    def run_once(self) -> ScoringTask | None:
        """Claim the next task and do it; None when there is nothing to do. A task that fails stays claimed
        until its lease runs out, then any worker retries it."""
        task = self.feedback.claim_scoring(self.worker, self.recommender.clock(), self.settings.scoring_lease_seconds)
        if task is None:
            return None
        tally = self.recommender.tally
        try:
            if task.kind in ("reader", "refresh"):
                # covering first: what is stale waits behind every reader's missing scores
                cover = task.kind == "reader" and self.settings.cover_first
                later = replace(task, kind="refresh") if cover else None
                self.recommender.precompute(task.subject, self.recommender.adapter_for(task.subject), later)
            else:
                self.rewrite(task.subject)
        except Exception:
            tally.add("scoring_tasks", kind=task.kind, outcome="failed")
            log.exception("background %s task failed; it is retried when its lease runs out", task.kind)
            return task
        self.feedback.finish_scoring(task, self.worker)
        tally.add("scoring_tasks", kind=task.kind, outcome="done")
        return task

    def rewrite(self, user_id: str) -> int:
        """Let the LLM rewrite the template explanations of a reader's latest ranking; keep each rewrite that
        names every fact its template names. Returns how many were kept."""
        try:
            record = self.feedback.latest_ranking(user_id)
        except NotFound:
            return 0  # erased meanwhile
        ranking_id = record.ranking_id
        top = [i for i in record.items[: self.settings.explain_top] if i.explanation_source == "template"]
        hits = self.recommender.articles.get([i.article_id for i in top])
        top = [i for i in top if i.article_id in hits and i.grounded_in]
        if not top:
            return 0
        groundings = [explain.Grounding.from_facts(i.grounded_in) for i in top]
        written = explain.write(
            self.recommender.backend, [hits[i.article_id].article for i in top], groundings, len(top), record.adapter
        )
        chosen = zip(written.values(), top, strict=True)
        kept = {item.position: text for (text, source), item in chosen if source == "llm"}
        if kept:
            self.feedback.set_explanations(ranking_id, {position: (text, "llm") for position, text in kept.items()})
        self.recommender.tally.add("explanation_rewrites", len(kept), outcome="kept")
        self.recommender.tally.add("explanation_rewrites", len(top) - len(kept), outcome="rejected")
        return len(kept)

    def sweep(self) -> int:
        """Ask for the rescoring of every active reader whose scores are older than the TTL; forget scores
        older than the recency window (their articles are no longer candidates). Returns how many were asked."""
        s, now = self.settings, self.recommender.clock()
        active = self.recommender.active_readers()
        by_adapter: dict[str | None, list[str]] = defaultdict(list)  # an experiment's arms score with their own
        for user_id in active:
            by_adapter[self.recommender.adapter_for(user_id)].append(user_id)
        scored: dict[str, float] = {}
        for adapter, readers in by_adapter.items():
            scored |= self.feedback.last_scored(self.recommender.scorer(adapter), readers)
        due = [u for u in active if scored.get(u, 0.0) < now - s.score_ttl_seconds]
        if due:  # a reader already waiting or being scored needs nothing more
            self.recommender.ask_scoring([ScoringTask("reader", u, active[u]) for u in due], again=False)
        self.feedback.forget_relevance(now - s.recency_hours * 3600)
        return len(due)
