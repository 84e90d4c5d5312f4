"""Reader events as clients send them: parsed from JSON rows, checked against what the service knows, then
stored by the caller. A batch is checked whole before anything of it is stored."""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from core.errors import InvalidInput, StoreUnavailable
from core.records import Event
from core.stores import ArticleStore, FeedbackStore
from core.times import parse_time
from retrieval.ingest import MAX_EXAMPLES, RowError

log = logging.getLogger("newsrank.events")


def event_from_dict(row: Any, now: float) -> Event:
    """One event from a JSON object (the API's and the JSONL loader's rows); a missing time is `now`."""
    if not isinstance(row, dict):
        raise InvalidInput("expected a JSON object")
    unknown = set(row) - {f.name for f in fields(Event)}
    if unknown:
        raise InvalidInput(f"unknown fields {sorted(unknown)}")
    dwell = row.get("dwell_seconds")
    if dwell is not None and (isinstance(dwell, bool) or not isinstance(dwell, int | float)):
        raise InvalidInput("dwell_seconds must be a number")
    value, text = row.get("value"), row.get("text")
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise InvalidInput("value must be a whole number")
    if text is not None and not isinstance(text, str):
        raise InvalidInput("text must be a string")
    return Event(
        user_id=str(row.get("user_id") or ""),
        article_id=str(row.get("article_id") or ""),
        type=str(row.get("type") or ""),
        ts=parse_time(row.get("ts"), now),
        dwell_seconds=dwell,
        ranking_id=row.get("ranking_id"),
        value=value,
        text=text,
    )


def events_from_rows(rows: Sequence[Any], now: float) -> list[Event]:
    """Every row as an event, or InvalidInput naming the first bad row (1-based): a batch is whole or nothing."""
    events = []
    for number, row in enumerate(rows, start=1):
        try:
            events.append(event_from_dict(row, now))
        except InvalidInput as exc:
            raise InvalidInput(f"event {number}: {exc}") from None
    return events


def read_jsonl_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed JSON or the decoding error) for each non-empty line of a file."""
    if not path.is_file():
        raise InvalidInput(f"no such file: {path}")
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if line.strip():
                try:
                    yield number, json.loads(line)
                except json.JSONDecodeError as exc:
                    yield number, exc


@dataclass
class EventReport:
    rows: int = 0
    stored: int = 0
    malformed: int = 0
    examples: list[RowError] = field(default_factory=list)


def read_events_file(path: Path, now: float) -> tuple[list[Event], EventReport]:
    """The valid events of a JSONL file, and a report of its malformed rows (a bulk import keeps the good ones)."""
    report, valid = EventReport(), []
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
    return valid, report


class EventChecks:
    """What a client's batch may claim: times no later than the server's now (and a little skew), articles that
    exist, rankings made for the event's own reader that showed the article the event names, and no more events
    per reader than the rate allows (a reader's clicks can't be used to steer others)."""

    def __init__(
        self,
        articles: ArticleStore,
        feedback: FeedbackStore,
        take: Callable[[Mapping[str, int]], None],
        future_seconds: float = 300.0,
    ) -> None:
        self.articles = articles
        self.feedback = feedback
        self.take = take  # charges each reader's events to their rate (RateLimited past it)
        self.future_seconds = future_seconds

    def __call__(self, events: Sequence[Event], now: float) -> None:
        late = next((e for e in events if e.ts > now + self.future_seconds), None)
        if late is not None:  # a reader dated in the future would be "active" for ever and outlive retention
            raise InvalidInput(f"event of {late.user_id!r} dated after the server's time: {late.ts:.0f} > {now:.0f}")
        try:
            named = [e.article_id for e in events if e.article_id]
            unknown = set(named) - self.articles.known(named)
        except StoreUnavailable:  # events matter more than this check: a Chroma outage must not lose them
            log.warning("the article store did not answer; events are stored without checking their articles")
            unknown = set()
        if unknown:
            raise InvalidInput(f"unknown articles: {', '.join(repr(a) for a in sorted(unknown)[:5])}")
        owners = self.feedback.ranking_owners([e.ranking_id for e in events if e.ranking_id])
        for e in events:
            if not e.ranking_id:
                continue
            owner, shown = owners.get(e.ranking_id, (None, frozenset()))
            if owner != e.user_id:
                raise InvalidInput(f"ranking {e.ranking_id!r} was not made for {e.user_id!r}")
            if e.article_id and e.article_id not in shown:
                raise InvalidInput(f"ranking {e.ranking_id!r} did not show article {e.article_id!r}")
        self.take(Counter(e.user_id for e in events))
