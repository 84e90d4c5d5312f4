"""The composition root: `Newsrank.from_settings` wires the stores, the embedder and the LLM backend once.
The CLI and the HTTP app both go through it; tests may build the parts themselves instead."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from adapters import export
from adapters.registry import AdapterRegistry
from chat.conversation import Chat, item_weights, pick_item
from config.experiment import Arm
from config.settings import Settings
from core.errors import InvalidInput, NotFound
from core.llm import Backend
from core.memo import Memo
from core.pseudonyms import Pseudonyms, from_key_file
from core.records import BLEND, MAX_INTERESTS, MAX_MUTES, Article, Preferences, ScoringTask
from core.stores import ArticleStore, FeedbackStore
from core.tally import Tally
from evaluation import stats
from feed.events import EventChecks, EventReport, events_from_rows, read_events_file
from feed.profile import Profile
from feed.recommender import MAX_K, Feed, FeedRequest, Recommender
from llm import prompts
from llm.backends.batching import MicroBatcher
from llm.backends.metered import MeteredBackend
from llm.tower import Tower
from retrieval.embed import Embedder
from retrieval.ingest import IngestReport, article_from_dict, ingest_file
from retrieval.store import ChromaArticleStore, chroma_client
from serve import shipped
from serve.jobs import TrainingJobs
from serve.limits import ModelSlots, RateLimiter
from store import open_store

log = logging.getLogger("newsrank.service")

RECENT_STATS_SECONDS = 300.0
DEMO_USERS = ("demo-sports", "demo-politics", "demo-tech", "demo-new")
RELEVANCE_NOTES = {  # the audit's words for where an item's relevance came from (core.records.RELEVANCE_SOURCES)
    "llm": "the LLM's, under the profile this feed was made for",
    "llm-stale": "the LLM's, under your profile before your latest reading (a rescoring was queued)",
    "none": "not computed yet, so the item was blended on its other signals, their weights scaled up",
    "popularity": "popularity stood in for it (no reading history to judge by)",
}


def make_backend(settings: Settings) -> Backend:
    if settings.backend == "transformers":
        from llm.backends.transformers import TransformersBackend

        inner: Backend = TransformersBackend(
            settings.llm,
            settings.model_cache,
            settings.batch_size,
            settings.threads,
            settings.llm_dtype,
            settings.merged_adapters,
            settings.llm_attention,
        )
    elif settings.backend == "vllm":
        from llm.backends.vllm import VllmBackend

        inner = VllmBackend(
            settings.llm,
            settings.model_cache,
            dtype=settings.vllm_dtype,
            max_model_len=settings.vllm_max_model_len,
            gpu_memory_utilization=settings.vllm_gpu_memory_utilization,
            tensor_parallel_size=settings.vllm_tensor_parallel_size,
            cpu_kvcache_gib=settings.vllm_cpu_kvcache_gib,
            max_loras=settings.vllm_max_loras,
            max_lora_rank=settings.vllm_max_lora_rank,
        )
    elif settings.backend == "openai":
        from llm.backends.openai import OpenAIBackend

        inner = OpenAIBackend(
            settings.llm,
            settings.model_cache,
            settings.openai_urls,
            api_key=settings.openai_api_key,
            timeout=settings.openai_timeout,
            retries=settings.openai_retries,
            batch_size=settings.batch_size,
        )
    else:
        raise InvalidInput(f"unknown backend {settings.backend!r}")
    if settings.micro_batching:
        inner = MicroBatcher(inner, max_wait_ms=settings.batch_window_ms)
    return MeteredBackend(inner)


def reader_pseudonyms(settings: Settings) -> Pseudonyms:
    """Readers' pseudonyms under PSEUDONYM_SECRET, or under the key file beside the API keys (made on first start)."""
    if settings.pseudonym_secret:
        return Pseudonyms(settings.pseudonym_secret.encode())
    return from_key_file(settings.pseudonym_key_path)


def clean_labels(labels: Sequence[str]) -> list[str]:
    cleaned = [" ".join(str(label).split()).lower() for label in labels]
    if any(not 1 <= len(label) <= 60 for label in cleaned):
        raise InvalidInput("each interest or mute must have 1-60 characters")
    return cleaned


class Newsrank:
    def __init__(
        self,
        settings: Settings,
        articles: ArticleStore,
        feedback: FeedbackStore,
        backend: Backend,
        clock: Callable[[], float] = time.time,
        adapters: AdapterRegistry | None = None,
        pseudonyms: Pseudonyms | None = None,
        tower: Tower | None = None,
    ) -> None:
        self.settings = settings
        self.articles = articles
        self.feedback = feedback
        self.backend = backend
        self.clock = clock
        self.adapters = adapters or AdapterRegistry(settings.adapters_path, feedback, clock)
        self.pseudonyms = pseudonyms or reader_pseudonyms(settings)
        self.tally = Tally()
        self.recommender = Recommender(
            articles, feedback, backend, settings, clock, self.adapters, self.tally, self.pseudonyms, tower
        )
        self.chat = Chat(
            feedback, articles, backend, clock, self.recommender.profile, settings.recency_hours, self.standings,
            settings.chat_chars_max, lambda user_id, query: self.recommend(FeedRequest(user_id, query=query)),
        )  # fmt: skip
        self.jobs = TrainingJobs(feedback, settings, clock)
        self.event_rate = RateLimiter(settings.events_per_reader_per_minute, time.monotonic)
        self.feed_rate = RateLimiter(settings.feeds_per_reader_per_minute, time.monotonic)
        self.new_readers = RateLimiter(settings.readers_per_key_per_hour / 60, time.monotonic)
        self._known: Memo[str, bool] = Memo(settings.behaviour_cache_seconds)  # readers seen: not new again
        self.check_events = EventChecks(articles, feedback, self.event_rate.take, settings.events_future_seconds)
        self._recent_stats: tuple[float, dict[str, Any]] | None = None
        self.model_slots = ModelSlots(settings.llm_concurrency, settings.llm_queue, settings.llm_wait_seconds,
                                      settings.llm_key_share)  # fmt: skip

    @classmethod
    def from_settings(cls, settings: Settings | None = None, backend: Backend | None = None) -> Newsrank:
        settings = settings or Settings()
        embedder = Embedder(settings.embedder)
        chroma = chroma_client(settings.chroma_dir, settings.chroma_url)
        tower = shipped.tower(settings)
        reader = tower.article_reader(settings.model_cache, settings.threads) if tower else None
        articles = ChromaArticleStore(chroma, embedder, settings.collection, reader=reader)
        feedback = open_store(
            settings.store_url, pool_size=settings.database_pool_size, timeout=settings.database_timeout
        )
        adapters = AdapterRegistry(settings.adapters_path, feedback)
        for installed in shipped.install(settings, adapters):  # first start: what a new install serves
            log.info("installed the shipped %s", installed)
        if (served := shipped.served(settings, adapters)) != settings:
            log.info("nothing ships as %r yet: serving the zero-shot model and the hand-set weights", shipped.NAME)
        return cls(served, articles, feedback, backend or make_backend(served), adapters=adapters, tower=tower)

    # -- articles -----------------------------------------------------------------------------------------
    def ingest(self, path: Path, fmt: str | None = None, show_progress: bool = True) -> IngestReport:
        report = ingest_file(self.articles, path, self.clock(), fmt, show_progress)
        if report.ingested:
            self.recommender.articles_arrived()
        return report

    def upsert_articles(self, rows: Sequence[Any]) -> int:
        """Validate every row first: one bad row rejects the batch, so nothing is half stored."""
        now = self.clock()
        articles = []
        for number, row in enumerate(rows, start=1):
            if not isinstance(row, dict):
                raise InvalidInput(f"article {number}: expected a JSON object")
            try:
                articles.append(article_from_dict(row, now))
            except InvalidInput as exc:
                raise InvalidInput(f"article {number}: {exc}") from None
        stored = self.articles.upsert(articles)
        self.recommender.articles_arrived()
        return stored

    # -- events -------------------------------------------------------------------------------------------
    def add_events(self, rows: Sequence[Any], batch_key: str | None = None, owner: str = "") -> int:
        """Store a batch of events atomically, after every row validated; returns only once durable. A batch
        sent again with the same `batch_key` (a client's Idempotency-Key, kept as a digest under the client
        `owner`) stores nothing and returns 0; the same key with another batch is a Conflict."""
        now = self.clock()
        events = events_from_rows(rows, now)
        self.check_events(events, now)
        self.count_new_readers(owner, [e.user_id for e in events])
        digest = hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()
        key = hashlib.sha256(f"{owner}\x00{batch_key}".encode()).hexdigest() if batch_key else None
        stored = self.feedback.add_events(events, key, now, digest)
        if stored:  # their profiles changed: rescore them in the background
            readers = dict.fromkeys(e.user_id for e in events)
            self.recommender.ask_scoring([ScoringTask("reader", user, now, owner=owner) for user in readers])
        return stored

    def count_new_readers(self, owner: str, user_ids: Sequence[str]) -> None:
        """Charge a client for the readers it brings in (RateLimited past readers_per_key_per_hour)."""
        known = self._known.many(user_ids, lambda ids: dict.fromkeys(self.feedback.known_among(ids), True), False)
        new = [u for u in dict.fromkeys(user_ids) if not known[u]]
        if new:
            self.new_readers.take({owner: len(new)}, "new readers")
            self._known.keep(dict.fromkeys(new, True))  # charged once: known from this request on

    def add_events_file(self, path: Path) -> EventReport:
        """Store every valid event of a JSONL file in one transaction; report the malformed rows."""
        valid, report = read_events_file(path, self.clock())
        report.stored = self.feedback.add_events(valid)
        return report

    # -- the feed -----------------------------------------------------------------------------------------
    def recommend(self, request: FeedRequest) -> Feed:
        """A feed from what the LLM computed ahead; a fresh one, or one naming an adapter other than the
        configured one (the background scorer works for that one alone), runs the LLM now."""
        return self.recommender.recommend(replace(request, fresh=self.waits_on_llm(request)))

    def standings(self, user_id: str) -> list[tuple[int, Article]]:
        """Where the reader's candidates rank now, best first (from what the LLM computed ahead; nothing stored)."""
        standings = self.recommender.rank(FeedRequest(user_id, k=MAX_K, explain=False))
        return [(n, standings.hits[p.index].article) for n, p in enumerate(standings.placed, start=1)]

    def stats(self, since: Any = None, until: Any = None, bucket: str = "day", by_arm: bool = False,
              metrics: Sequence[str] = ()) -> dict[str, Any]:  # fmt: skip
        """The five metrics over the feeds made in a window (evaluation.stats.report)."""
        return stats.report(
            self.feedback, since, until, self.clock(), bucket, by_arm, metrics, self.recommender.experiment()
        )

    def serving(self) -> dict[str, Any]:
        """What feeds are made with now, per experiment arm (or "all"): the adapter and ranker versions, the blend
        weights; and the model, backend and strategy under them."""
        s, experiment = self.settings, self.recommender.experiment()
        arms = experiment.arms.items() if experiment else [("all", Arm())]
        served = {}
        for name, arm in arms:
            ranker = self.recommender.learned_ranker(arm.ranker)
            served[name] = {"adapter": self.recommender.default_adapter(arm.adapter),
                            "ranker": ranker[0] if ranker else None,
                            "weights": {**s.weights.frozen(), **arm.weights}}  # fmt: skip
        return {"experiment": experiment.model_dump() if experiment else None, "arms": served,
                "model": self.backend.model, "backend": self.backend.name, "strategy": s.strategy}  # fmt: skip

    def recent_stats(self) -> dict[str, Any]:
        """The metrics of the last day's feeds by arm (evaluation.stats.summarise: no article tables, no propensities),
        computed at most once every 5 minutes: what /metrics shows."""
        now = self.clock()
        if self._recent_stats is None or now - self._recent_stats[0] >= RECENT_STATS_SECONDS:
            outcomes = self.feedback.feed_outcomes(now - 86400, now + 1)  # what was made this second included
            experiment = self.recommender.experiment()
            self._recent_stats = (now, stats.summarise(outcomes, by_arm=True,
                                                       experiment=experiment.name if experiment else None))  # fmt: skip
        return self._recent_stats[1]

    def check_configuration(self) -> None:
        """At start: the pseudonym secret is the one every instance sharing the store uses (or readers would be
        split, exported and erased differently by each); the configured adapter and ranker, and every arm of the
        experiment, name ones that exist. InvalidInput if not: a typo must stop the service at its start, not fail
        the feeds of the readers in one arm."""
        if (
            self.feedback.check_value("pseudonym_secret", self.pseudonyms.fingerprint())
            != self.pseudonyms.fingerprint()
        ):
            raise InvalidInput("another instance shares this store under another pseudonym secret: give every instance"
                               " the same NEWSRANK_PSEUDONYM_SECRET (or the same pseudonym.key)")  # fmt: skip
        try:
            if not (self.settings.learning_loop and self._untrained(self.settings.adapter)):
                self.recommender.use_adapter(self.settings.adapter)
            self.recommender.learned_ranker()
        except (NotFound, InvalidInput, OSError) as exc:
            s = self.settings
            said = f"NEWSRANK_ADAPTER={s.adapter}, NEWSRANK_RANKER={s.ranker}; none serves the zero-shot or hand-set"
            raise InvalidInput(f"{exc} ({said})") from None
        experiment = self.settings.experiment
        for name, arm in experiment.arms.items() if experiment else ():
            try:
                self.recommender.use_adapter(arm.adapter)
                self.recommender.learned_ranker(arm.ranker)
            except (NotFound, InvalidInput, OSError) as exc:
                raise InvalidInput(f"experiment {experiment.name!r}, arm {name!r}: {exc}") from None

    def _untrained(self, reference: str | None) -> bool:
        """A name none of whose versions serves yet (none trained, or only candidates on trial or rolled back): the
        base model serves it until the learning loop promotes its first."""
        return bool(reference) and "@" not in reference and not any(v.active for v in self.adapters.versions(reference))

    def waits_on_llm(self, request: FeedRequest) -> bool:
        return request.fresh or bool(request.adapter and request.adapter != self.settings.adapter)

    # -- readers ------------------------------------------------------------------------------------------
    def user(self, user_id: str) -> Profile:
        if not self.feedback.known_user(user_id):
            raise NotFound(f"no user {user_id!r}")
        return self.recommender.profile(user_id)

    def set_preferences(
        self, user_id: str, interests: Sequence[str] | None = None, mutes: Sequence[str] | None = None
    ) -> Preferences:
        """Replace the explicit interests and/or mutes (None keeps what is there)."""
        current = self.feedback.preferences(user_id)
        interests = clean_labels(interests) if interests is not None else current.interests
        mutes = clean_labels(mutes) if mutes is not None else current.mutes
        if len(set(interests)) > MAX_INTERESTS or len(set(mutes)) > MAX_MUTES:
            raise InvalidInput(f"at most {MAX_INTERESTS} interests and {MAX_MUTES} mutes")
        updated = Preferences.newest(interests, mutes, current.follows)
        self.feedback.set_preferences(user_id, updated, self.clock())
        self.recommender.ask_scoring([ScoringTask("reader", user_id, self.clock())])
        return updated

    def follow(self, user_id: str, story: str, follow: bool = True) -> Preferences:
        """Follow a story (its new articles enter the reader's feed, boosted) or stop following it."""
        if follow and not self.articles.story(story):
            raise NotFound(f"no story {story!r}")
        updated = self.feedback.preferences(user_id).following(story, follow)
        self.feedback.set_preferences(user_id, updated, self.clock())
        self.recommender.ask_scoring([ScoringTask("reader", user_id, self.clock())])
        return updated

    def export_user(self, user_id: str) -> dict[str, Any]:
        if not self.feedback.known_user(user_id):
            raise NotFound(f"no user {user_id!r}")
        return self.feedback.export_user(user_id)

    def delete_user(self, user_id: str) -> dict[str, int]:
        """Erase a reader: events, preferences, rankings, and their rows in exported training examples (found
        by their pseudonym, or by the raw id in files older versions wrote), so no later training run sees them.
        Adapters already trained are not unlearned; retrain to drop them (a private adapter bounds them)."""
        if not self.feedback.known_user(user_id):
            raise NotFound(f"no user {user_id!r}")
        counts = self.feedback.delete_user(user_id, self.clock())
        names = (self.pseudonyms(user_id), user_id)
        counts["training_examples"] = sum(
            export.drop_group(path, name)
            for path in (self.settings.data_dir / "runs").glob("*/examples.jsonl")
            for name in names
        )
        return counts

    def why(self, user_id: str, article_id: str, ranking_id: str | None = None) -> str:
        """Answer "why was this recommended?" from the stored ranking record, not from a fresh guess."""
        record = self.chat.record(user_id, ranking_id, article_id)
        item = pick_item(record, article_id, "")
        created = datetime.fromtimestamp(record.created_at, UTC).strftime("%Y-%m-%d %H:%M UTC")
        weights = item_weights(item, record.weights)  # blended without relevance: the others' scaled up
        return prompts.render(
            "why.v3",
            item=item,
            total=len(record.items),
            user_id=user_id,
            created=created,
            strategy=record.strategy,
            backend=record.backend,
            model=record.model,
            adapter=record.adapter,
            prompt_version=record.prompt_version,
            cold_start=record.cold_start,
            signals=BLEND,
            weights=weights,
            relevance=RELEVANCE_NOTES.get(item.relevance_source or ""),
        )
