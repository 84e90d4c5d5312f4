import json

import pytest

from core.errors import InvalidInput, NotFound
from feed.recommender import FeedRequest
from llm.backends.fake import FakeBackend
from retrieval.store import ChromaArticleStore, chroma_client
from serve import demo
from serve.service import DEMO_USERS, Newsrank
from tests.conftest import NOW


@pytest.fixture
def service(settings, embedder, feedback, tmp_path):
    articles = ChromaArticleStore(chroma_client(tmp_path / "chroma"), embedder, "demo")
    return Newsrank(settings, articles, feedback, FakeBackend(), clock=lambda: NOW)


def test_demo_seed_is_fresh_idempotent_and_serves_every_demo_user(service):
    report = demo.seed(service.articles, service.feedback, service.clock(), show_progress=False)
    assert report.ingested == service.articles.count() >= 300 and report.malformed == 0
    events = service.feedback.count_events()
    demo.seed(service.articles, service.feedback, service.clock(), show_progress=False)
    assert service.articles.count() == report.ingested and service.feedback.count_events() == events
    newest = max(h.article.published_at for h in service.articles.recent(since=NOW - 86400, k=500))
    assert newest == pytest.approx(NOW)  # shifted so the newest demo article is brand new
    categories = {h.article.category for h in service.articles.recent(since=0, k=1000)}
    assert len(categories) >= 12
    for user in DEMO_USERS:
        feed = service.recommend(FeedRequest(user, k=5))
        assert len(feed.items) == 5 and feed.cold_start == (user == "demo-new")
    sports = service.recommend(FeedRequest("demo-sports", k=5))
    assert [i.article.category for i in sports.items].count("sports") >= 4
    tech = service.recommend(FeedRequest("demo-tech", k=10))
    assert "entertainment" not in {i.article.category for i in tech.items}  # demo-tech mutes it


def test_events_file_stores_valid_rows_and_reports_the_rest(service, tmp_path):
    path = tmp_path / "events.jsonl"
    rows = [
        {"user_id": "u1", "article_id": "a1", "type": "click", "ts": "2025-12-01T10:00:00Z"},
        {"user_id": "u1", "article_id": "a1", "type": "dwell", "dwell_seconds": 42},
        {"user_id": "u1", "article_id": "a2", "type": "teleport"},
        {"user_id": "u1", "article_id": "a2", "type": "click", "extra": 1},
        {"user_id": "u1", "article_id": "a2", "type": "dwell", "dwell_seconds": "long"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken\n")
    report = service.add_events_file(path)
    assert (report.rows, report.stored, report.malformed) == (6, 2, 4)
    assert [e.line for e in report.examples] == [3, 4, 5, 6]
    stored = service.feedback.events("u1")
    assert [e.type for e in stored] == ["click", "dwell"] and stored[1].ts == NOW
    with pytest.raises(InvalidInput):
        service.add_events_file(tmp_path / "missing.jsonl")


def test_why_answers_from_the_record_and_refuses_unknowns(service):
    demo.seed(service.articles, service.feedback, service.clock(), show_progress=False)
    feed = service.recommend(FeedRequest("demo-politics", k=3))
    second = feed.items[1].record
    answer = service.why("demo-politics", second.article_id)
    assert "#2 of 3" in answer and f"{second.score:.3f}" in answer and "fake:fake-llm" in answer
    assert service.why("demo-politics", second.article_id, feed.ranking_id) == answer
    with pytest.raises(NotFound):
        service.why("demo-politics", "never-shown")
    with pytest.raises(NotFound):
        service.why("demo-sports", second.article_id, feed.ranking_id)  # someone else's ranking
