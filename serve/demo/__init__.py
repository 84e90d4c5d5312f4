"""The demo corpus and readers that `make serve` starts with: articles.jsonl, users.jsonl and events.jsonl here."""

from __future__ import annotations

import json
from dataclasses import replace
from importlib.resources import files

from core.records import Preferences
from core.stores import ArticleStore, FeedbackStore
from core.times import parse_time
from feed.events import event_from_dict
from retrieval.ingest import IngestReport, article_from_dict


def rows(name: str) -> list[dict]:
    """The rows of one of the demo files (articles, users, events)."""
    text = (files("serve.demo") / f"{name}.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line]


def seed(articles: ArticleStore, feedback: FeedbackStore, now: float, show_progress: bool = True) -> IngestReport:
    """Load the demo corpus and users, shifted in time so that the newest demo article is brand new.

    Articles are upserted (idempotent); a demo user's events are added only if that user is unknown.
    """
    from tqdm import tqdm

    corpus = rows("articles")
    shift = now - max(parse_time(r["published_at"], 0.0) for r in corpus)
    shifted = [replace(a, published_at=a.published_at + shift) for a in (article_from_dict(r, 0.0) for r in corpus)]
    report = IngestReport("demo corpus", rows=len(corpus))
    with tqdm(total=len(shifted), desc="demo corpus", unit=" articles", disable=not show_progress) as bar:
        report.ingested = articles.upsert(shifted, progress=bar)
    events = [event_from_dict(row, 0.0) for row in rows("events")]
    for user in rows("users"):
        if feedback.known_user(user["user_id"]):
            continue
        feedback.set_preferences(user["user_id"], Preferences(tuple(user["interests"]), tuple(user["mutes"])), now)
        feedback.add_events([replace(e, ts=e.ts + shift) for e in events if e.user_id == user["user_id"]])
    return report
