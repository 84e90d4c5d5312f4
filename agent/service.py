"""The composition root: `Newsrank.from_settings` wires the stores, the embedder and the LLM backend once.
The CLI and the HTTP app both go through it; tests may build the parts themselves instead."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from importlib.resources import files
from pathlib import Path
from typing import Any

from adapters.registry import AdapterRegistry
from agent import prompts
from agent.backends.base import Backend
from agent.errors import InvalidInput, NotFound
from agent.feedback import Event, FeedbackStore, Preferences
from agent.ranking import Feed, FeedRequest, Recommender
from agent.settings import Settings
from retrieval.embed import Embedder
from retrieval.ingest import MAX_EXAMPLES, IngestReport, RowError, article_from_dict, ingest_file, parse_time
from retrieval.store import ArticleStore, chroma_client

DEMO_USERS = ("demo-sports", "demo-politics", "demo-tech", "demo-new")


def make_backend(settings: Settings) -> Backend:
    if settings.backend == "transformers":
        from agent.backends.transformers import TransformersBackend

        return TransformersBackend(settings.llm, settings.model_cache, settings.batch_size, settings.threads)
    if settings.backend == "vllm":
        from agent.backends.vllm import VllmBackend

        return VllmBackend(
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
    if settings.backend == "openai":
        from agent.backends.openai import OpenAIBackend

        return OpenAIBackend(
            settings.llm,
            settings.model_cache,
            settings.openai_urls,
            api_key=settings.openai_api_key,
            timeout=settings.openai_timeout,
            retries=settings.openai_retries,
            batch_size=settings.batch_size,
        )
    raise InvalidInput(f"unknown backend {settings.backend!r}")


@dataclass
class EventReport:
    rows: int = 0
    stored: int = 0
    malformed: int = 0
    examples: list[RowError] = field(default_factory=list)


def event_from_dict(row: Any, now: float) -> Event:
    if not isinstance(row, dict):
        raise InvalidInput("expected a JSON object")
    unknown = set(row) - {"user_id", "article_id", "type", "ts", "dwell_seconds", "ranking_id"}
    if unknown:
        raise InvalidInput(f"unknown fields {sorted(unknown)}")
    dwell = row.get("dwell_seconds")
    if dwell is not None and (isinstance(dwell, bool) or not isinstance(dwell, int | float)):
        raise InvalidInput("dwell_seconds must be a number")
    return Event(
        user_id=str(row.get("user_id") or ""),
        article_id=str(row.get("article_id") or ""),
        type=str(row.get("type") or ""),
        ts=parse_time(row.get("ts"), now),
        dwell_seconds=dwell,
        ranking_id=row.get("ranking_id"),
    )


def read_jsonl_rows(path: Path) -> Iterator[tuple[int, Any]]:
    if not path.is_file():
        raise InvalidInput(f"no such file: {path}")
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if line.strip():
                try:
                    yield number, json.loads(line)
                except json.JSONDecodeError as exc:
                    yield number, exc


class Newsrank:
    def __init__(
        self,
        settings: Settings,
        articles: ArticleStore,
        feedback: FeedbackStore,
        backend: Backend,
        clock: Callable[[], float] = time.time,
        adapters: AdapterRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.articles = articles
        self.feedback = feedback
        self.backend = backend
        self.clock = clock
        self.adapters = adapters or AdapterRegistry(settings.adapters_dir)
        self.recommender = Recommender(articles, feedback, backend, settings, clock, self.adapters)

    @classmethod
    def from_settings(cls, settings: Settings | None = None, backend: Backend | None = None) -> Newsrank:
        settings = settings or Settings()
        embedder = Embedder(settings.embedder)
        articles = ArticleStore(chroma_client(settings.chroma_dir, settings.chroma_url), embedder, settings.collection)
        feedback = FeedbackStore(settings.feedback_db)
        return cls(settings, articles, feedback, backend or make_backend(settings))

    # -- articles -----------------------------------------------------------------------------------------
    def ingest(self, path: Path, fmt: str | None = None, show_progress: bool = True) -> IngestReport:
        return ingest_file(self.articles, path, self.clock(), fmt, show_progress)

    def seed_demo(self, show_progress: bool = True) -> IngestReport:
        """Load the demo corpus and users, shifted in time so that the newest demo article is brand new.

        Articles are upserted (idempotent); a demo user's events are added only if that user is unknown.
        """
        demo = files("agent") / "demo"
        rows = [json.loads(line) for line in (demo / "articles.jsonl").read_text().splitlines() if line]
        newest = max(parse_time(r["published_at"], 0.0) for r in rows)
        shift = self.clock() - newest
        articles = [replace(a, published_at=a.published_at + shift) for a in (article_from_dict(r, 0.0) for r in rows)]
        report = IngestReport("demo corpus", rows=len(rows))
        from tqdm import tqdm

        with tqdm(total=len(articles), desc="demo corpus", unit=" articles", disable=not show_progress) as bar:
            report.ingested = self.articles.upsert(articles, progress=bar)
        users = [json.loads(line) for line in (demo / "users.jsonl").read_text().splitlines() if line]
        events = [
            event_from_dict(json.loads(line), 0.0) for line in (demo / "events.jsonl").read_text().splitlines() if line
        ]
        for user in users:
            if self.feedback.known_user(user["user_id"]):
                continue
            prefs = Preferences(tuple(user["interests"]), tuple(user["mutes"]))
            self.feedback.set_preferences(user["user_id"], prefs, self.clock())
            self.feedback.add_events([replace(e, ts=e.ts + shift) for e in events if e.user_id == user["user_id"]])
        return report

    # -- events -------------------------------------------------------------------------------------------
    def add_events_file(self, path: Path) -> EventReport:
        """Store every valid event of a JSONL file in one transaction; report the malformed rows."""
        report = EventReport()
        valid: list[Event] = []
        now = self.clock()
        for number, row in read_jsonl_rows(path):
            report.rows += 1
            try:
                if isinstance(row, Exception):
                    raise InvalidInput(f"not JSON: {row}")
                valid.append(event_from_dict(row, now))
            except InvalidInput as exc:
                report.malformed += 1
                if len(report.examples) < MAX_EXAMPLES:
                    report.examples.append(RowError(number, str(exc)))
        report.stored = self.feedback.add_events(valid)
        return report

    # -- the feed -----------------------------------------------------------------------------------------
    def recommend(self, request: FeedRequest) -> Feed:
        return self.recommender.recommend(request)

    def why(self, user_id: str, article_id: str, ranking_id: str | None = None) -> str:
        """Answer "why was this recommended?" from the stored ranking record, not from a fresh guess."""
        record = (
            self.feedback.ranking(ranking_id) if ranking_id else self.feedback.latest_ranking_with(user_id, article_id)
        )
        if record.user_id != user_id:
            raise NotFound(f"ranking {record.ranking_id!r} is not for user {user_id!r}")
        item = next((i for i in record.items if i.article_id == article_id), None)
        if item is None:
            raise NotFound(f"article {article_id!r} is not in ranking {record.ranking_id!r}")
        created = datetime.fromtimestamp(record.created_at, UTC).strftime("%Y-%m-%d %H:%M UTC")
        return prompts.render(
            "why.v1",
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
            relevance_source="popularity among readers" if record.cold_start else "the LLM's P(Yes)",
            weights=record.weights,
        )
