"""The scale-out configuration: the same article store against a real Chroma server (`chroma run`)."""

from dataclasses import replace

import pytest

from retrieval.store import ChromaArticleStore, chroma_client
from tests.conftest import CORPUS, chroma_server


@pytest.fixture
def chroma_url(tmp_path):
    with chroma_server(tmp_path / "server") as url:
        yield url


def test_article_store_over_http(chroma_url, embedder, tmp_path):
    store = ChromaArticleStore(chroma_client(tmp_path / "unused", chroma_url), embedder, "articles")
    assert store.upsert(CORPUS) == len(CORPUS) and store.count() == len(CORPUS)
    hits = store.search(text="football playoff game", k=3, exclude_ids=["s1"])
    assert [h.article.category for h in hits] == ["sports"] * 3 and "s1" not in {h.article.id for h in hits}
    assert store.get(["t1"])["t1"].article == replace(CORPUS[10], story="t1")
    assert not (tmp_path / "unused").exists()  # nothing embedded was created
