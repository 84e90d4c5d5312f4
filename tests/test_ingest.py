from pathlib import Path

import pytest

from core.errors import InvalidInput
from core.times import parse_time
from retrieval.ingest import RowError, ingest_file, read_articles, read_mind_news
from retrieval.store import ChromaArticleStore as ArticleStore
from tests.conftest import NOW, SHARED_DATA

FIXTURES = Path(__file__).parent / "fixtures"


def test_jsonl_reports_malformed_rows_without_aborting(article_store: ArticleStore):
    report = ingest_file(article_store, FIXTURES / "articles.jsonl", NOW, show_progress=False)
    assert (report.rows, report.malformed) == (9, 5)  # the blank line is no row
    assert [e.line for e in report.examples] == [3, 4, 5, 6, 7]
    assert "title" in report.examples[1].reason and "bad time" in report.examples[3].reason
    assert article_store.count() == report.ingested == 3  # j1, j2 (twice, the last wins), j5
    got = article_store.get(["j1", "j2", "j5"])
    assert got["j1"].article.category == "politics"  # normalised
    assert got["j2"].article.title == "Hawks win the final (updated)"
    assert got["j5"].article.published_at == NOW  # no time given: the ingest time
    assert "5 malformed" in report.summary() and "line 3" in report.summary()


def test_ingest_is_idempotent(article_store: ArticleStore):
    for _ in range(2):
        ingest_file(article_store, FIXTURES / "news.tsv", NOW, show_progress=False)
    assert article_store.count() == 3


def test_mind_news_rows():
    rows = list(read_mind_news(FIXTURES / "news.tsv", NOW))
    good = [r for r in rows if not isinstance(r, RowError)]
    bad = [r for r in rows if isinstance(r, RowError)]
    assert [a.id for a in good] == ["N1", "N2", "N4"]
    assert good[0].abstract == "A late field goal." and good[0].subcategory == "football"
    assert [e.line for e in bad] == [3, 4]


def test_unknown_format_and_missing_file(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(InvalidInput):
        list(read_articles(tmp_path / "x.csv", NOW))
    with pytest.raises(InvalidInput):
        list(read_articles(tmp_path / "missing.jsonl", NOW))
    with pytest.raises(InvalidInput):
        list(read_articles(FIXTURES / "news.tsv", NOW, fmt="xml"))


def test_parse_time():
    assert parse_time("2026-01-01T00:00:00Z", 0) == 1767225600.0
    assert parse_time("2026-01-01T00:00:00", 0) == 1767225600.0  # naive = UTC
    assert parse_time("11/15/2019 8:55:22 AM", 0) == 1573808122.0  # MIND behaviors
    assert parse_time(None, 7.0) == 7.0
    with pytest.raises(InvalidInput):
        parse_time(True, 0)


@pytest.mark.skipif(not (SHARED_DATA / "mind-dev" / "news.tsv").is_file(), reason="shared MIND data is absent")
def test_real_mind_news_parses_cleanly():
    rows = list(read_mind_news(SHARED_DATA / "mind-dev" / "news.tsv", NOW))
    bad = [r for r in rows if isinstance(r, RowError)]
    assert len(rows) > 9000 and len(bad) / len(rows) < 0.01
