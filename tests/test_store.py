from dataclasses import replace

import pytest

from core.errors import InvalidInput
from core.records import Article
from retrieval.store import ChromaArticleStore as ArticleStore
from retrieval.store import chroma_client, where_clause
from tests.conftest import CORPUS, HOUR, NOW, article


def test_upsert_get_delete_count(article_store: ArticleStore):
    assert article_store.count() == 0
    assert article_store.upsert(CORPUS) == len(CORPUS)
    assert article_store.upsert(CORPUS[:3]) == 3  # idempotent by id
    assert article_store.count() == len(CORPUS)
    got = article_store.get(["s1", "t1", "missing"])
    assert set(got) == {"s1", "t1"}
    assert got["s1"].article == replace(CORPUS[0], story="s1")  # a story of its own until a copy joins it
    assert got["s1"].embedding.shape == (384,)
    article_store.delete(["s1"])
    assert article_store.count() == len(CORPUS) - 1 and not article_store.get(["s1"])


def test_search_by_text_ranks_the_topic_first(corpus_store: ArticleStore):
    hits = corpus_store.search(text="football playoff game", k=3)
    assert [h.article.category for h in hits] == ["sports"] * 3
    assert hits[0].similarity >= hits[1].similarity >= hits[2].similarity


def test_search_by_vector_with_filters(corpus_store: ArticleStore, embedder):
    vector = embedder.encode(["football"])[0]
    recent = corpus_store.search(vector=vector, k=20, since=NOW - 10 * HOUR)
    assert recent and all(h.article.published_at >= NOW - 10 * HOUR for h in recent)
    assert {"s1", "s2", "s3"}.isdisjoint(h.article.id for h in recent)
    food = corpus_store.search(vector=vector, k=20, categories=["food"])
    assert {h.article.id for h in food} == {"f1", "f2", "f3"}
    no_sports = corpus_store.search(vector=vector, k=20, exclude_categories=["sports"])
    assert all(h.article.category != "sports" for h in no_sports)
    excluded = corpus_store.search(vector=vector, k=3, exclude_ids=["s4", "s6"])
    assert len(excluded) == 3 and {"s4", "s6"}.isdisjoint(h.article.id for h in excluded)
    with pytest.raises(InvalidInput):
        corpus_store.search(k=3)


def test_recent_is_newest_first(corpus_store: ArticleStore):
    hits = corpus_store.recent(since=NOW - 3.5 * HOUR, k=10, exclude_ids=["p1"])
    times = [h.article.published_at for h in hits]
    assert times == sorted(times, reverse=True) and "p1" not in {h.article.id for h in hits}
    assert len(hits) == 6  # t1, f1 (2h), s4, p2, t2, f2 (3h)


def test_empty_store_search(article_store: ArticleStore):
    assert article_store.search(text="anything", k=5) == []


def test_the_persistent_store_reopens(embedder, tmp_path):
    ArticleStore(chroma_client(tmp_path / "c"), embedder, "persist").upsert([article("x", "Hello world", "misc")])
    reopened = ArticleStore(chroma_client(tmp_path / "c"), embedder, "persist")
    assert reopened.count() == 1 and reopened.get(["x"])["x"].article.title == "Hello world"


def test_bad_articles_and_urls(tmp_path):
    with pytest.raises(InvalidInput):
        Article("", "title", NOW)
    with pytest.raises(InvalidInput):
        Article("id", "  ", NOW)
    with pytest.raises(InvalidInput):
        chroma_client(tmp_path, url="not a url")


def test_where_clause():
    assert where_clause() is None
    assert where_clause(since=5) == {"published_at": {"$gte": 5.0}}
    assert where_clause(since=5, categories=["a"]) == {
        "$and": [{"published_at": {"$gte": 5.0}}, {"category": {"$in": ["a"]}}]
    }
