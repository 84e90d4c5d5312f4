"""Article loaders: JSONL (one article per line) and MIND `news.tsv`.

A malformed row is reported (how many, and the first few with their line numbers) and skipped; it never
aborts the file. Upserts are keyed by article id, so ingesting the same file twice changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from core.errors import InvalidInput
from core.records import Article
from core.stores import ArticleStore
from core.times import parse_time

MIND_NEWS_COLUMNS = (
    "id",
    "category",
    "subcategory",
    "title",
    "abstract",
    "url",
    "title_entities",
    "abstract_entities",
)
MAX_EXAMPLES = 5


@dataclass(frozen=True)
class RowError:
    line: int
    reason: str


@dataclass
class IngestReport:
    path: str
    rows: int = 0
    ingested: int = 0
    malformed: int = 0
    examples: list[RowError] = field(default_factory=list)

    def add_error(self, error: RowError) -> None:
        self.malformed += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(error)

    def summary(self) -> str:
        text = f"{self.path}: {self.ingested} articles ingested from {self.rows} rows, {self.malformed} malformed"
        return "\n".join([text, *(f"  line {e.line}: {e.reason}" for e in self.examples)])


def article_from_dict(row: dict[str, Any], now: float) -> Article:
    if not isinstance(row, dict):
        raise InvalidInput("expected a JSON object")
    article_id = row.get("id", row.get("article_id"))
    if article_id is None or not str(article_id).strip():
        raise InvalidInput("missing 'id'")
    if not isinstance(row.get("title"), str) or not row["title"].strip():
        raise InvalidInput("missing 'title'")
    return Article(
        id=str(article_id).strip(),
        title=" ".join(row["title"].split()),
        abstract=" ".join(str(row.get("abstract") or "").split()),
        category=str(row.get("category") or "").strip().lower(),
        subcategory=str(row.get("subcategory") or "").strip().lower(),
        url=str(row.get("url") or ""),
        source=" ".join(str(row.get("source") or "").split()).lower() or domain(str(row.get("url") or "")),
        published_at=parse_time(row.get("published_at"), now),
    )


def domain(url: str) -> str:
    """An article's source when none is given: its URL's host, without a leading www."""
    host = urlparse(url.strip()).hostname or ""
    return host.removeprefix("www.")


def read_jsonl(path: Path, now: float) -> Iterator[Article | RowError]:
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                yield article_from_dict(json.loads(line), now)
            except (json.JSONDecodeError, InvalidInput) as exc:
                yield RowError(number, str(exc))


def read_mind_news(path: Path, now: float) -> Iterator[Article | RowError]:
    """MIND news.tsv has no publication times: articles are stamped with `now` (the ingest time)."""
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            fields = line.rstrip("\n").split("\t")
            if len(fields) < 4:
                yield RowError(number, f"expected at least 4 tab-separated fields, got {len(fields)}")
                continue
            row = dict(zip(MIND_NEWS_COLUMNS, fields, strict=False))
            try:
                yield article_from_dict(row, now)
            except InvalidInput as exc:
                yield RowError(number, str(exc))


def detect_format(path: Path) -> str:
    if path.suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    if path.suffix == ".tsv":
        return "mind"
    raise InvalidInput(f"cannot tell the format of {path}: use .jsonl or MIND news.tsv, or pass --format")


def read_articles(path: Path, now: float, fmt: str | None = None) -> Iterator[Article | RowError]:
    if not path.is_file():
        raise InvalidInput(f"no such file: {path}")
    fmt = fmt or detect_format(path)
    readers = {"jsonl": read_jsonl, "mind": read_mind_news}
    if fmt not in readers:
        raise InvalidInput(f"unknown format {fmt!r}; expected one of {', '.join(readers)}")
    return readers[fmt](path, now)


def ingest_file(
    store: ArticleStore, path: Path, now: float, fmt: str | None = None, show_progress: bool = True
) -> IngestReport:
    from tqdm import tqdm

    report = IngestReport(str(path))
    rows = read_articles(path, now, fmt)
    with tqdm(desc=f"ingest {path.name}", unit=" articles", disable=not show_progress) as bar:

        def valid() -> Iterator[Article]:
            for row in rows:
                report.rows += 1
                if isinstance(row, RowError):
                    report.add_error(row)
                else:
                    yield row

        report.ingested = store.upsert(valid(), progress=bar)
    return report
