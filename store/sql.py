"""The feedback store on SQL, written once for every dialect.

Readers' events and preferences, ranking records, background jobs and the adapter registry's state. The SQL
text is shared (`?` placeholders); a dialect (store/sqlite.py, store/postgres.py) supplies connections, its
migrations and how it holds times and JSON. Values cross into and out of the database through one codec keyed
by column name, so a method never converts a timestamp or a JSON list by hand.

Durability: every write runs in one transaction that has committed when the method returns, so an API that
acknowledges after `add_events` never loses an acknowledged event.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from core.errors import Conflict, InvalidInput, NotFound
from core.records import (
    ENGAGEMENT,
    SCORING_KINDS,
    AdapterVersion,
    CachedScore,
    Event,
    FeedOutcome,
    Job,
    Preferences,
    RankedItem,
    RankingRecord,
    ScoringTask,
)

TIME_COLUMNS = frozenset(
    {"ts", "updated_at", "created_at", "finished_at", "heartbeat_at", "scored_at", "requested_at", "claimed_at",
     "served_at", "erased_at", "at"}
)  # fmt: skip
JSON_COLUMNS = frozenset(
    {"interests", "mutes", "weights", "grounded_in", "args", "history", "signals", "degraded", "last_change",
     "details", "chosen_over", "follows"}
)  # fmt: skip
BOOL_COLUMNS = frozenset({"cold_start"})
# every table, parents before children: the order to copy a store in (`newsrank db migrate-to`). Not the
# relevance cache and the scoring queue: the background scorer fills them again.
TABLES = ("users", "events", "rankings", "ranking_items", "jobs", "adapters", "adapter_versions", "event_batches",
          "erased", "service_checks", "loop_events")  # fmt: skip
# a scoring task's kind as its rank in SCORING_KINDS: the queue hands tasks out in that order and, past its bound,
# drops them in the reverse
KIND_RANK = f"CASE kind {' '.join(f'WHEN {k!r} THEN {i}' for i, k in enumerate(SCORING_KINDS))} END"
ITEM_COLUMNS = ("ranking_id", *(f.name for f in fields(RankedItem)))
EVENT_COLUMNS = tuple(f.name for f in fields(Event))
BATCH_KEY_DAYS = 1
# the events a click count counts: popularity's readers and the click-through rate's numerator, whom its
# denominator must hold too (shown_places), or the rate could pass 1
CLICKED = "'click', 'like'"


def largest_first(counts: dict[str, int], drop: int) -> dict[str, int]:
    """How many to drop from each, `drop` in all, from the largest down (water-filling): {"a": 9, "b": 2}, 5 →
    {"a": 5}; the smaller ones lose nothing until the larger ones are down to their size."""
    left, taken = dict(counts), dict.fromkeys(counts, 0)
    for _ in range(min(drop, sum(left.values()))):
        largest = max(left, key=lambda k: (left[k], k))
        left[largest] -= 1
        taken[largest] += 1
    return {k: n for k, n in taken.items() if n}


def erased_key(user_id: str) -> str:
    """How a tombstone names an erased reader: a digest, so that the store keeps no copy of the id."""
    return hashlib.sha256(f"erased:{user_id}".encode()).hexdigest()


# a write that names an erased reader is refused (or, for work that was in flight, dropped) while the tombstone is
# there: retention removes tombstones after Settings.erasure_hold_hours
NOT_ERASED = "NOT EXISTS (SELECT 1 FROM erased WHERE user_key = ?)"


class Tx:
    """One open transaction: SQL in, rows out as dicts of plain Python values."""

    def __init__(self, store: SqlFeedbackStore, connection: Any) -> None:
        self.store = store
        self.connection = connection

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.connection.execute(self.store.placeholders(sql), tuple(params))

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return [self.store.decode(row) for row in self.execute(sql, params).fetchall()]

    def row(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        row = self.execute(sql, params).fetchone()
        return None if row is None else self.store.decode(row)

    def rows_in(
        self, sql: str, params: Sequence[Any], ids: Sequence[Any], chunk: int = 300, times: int = 1
    ) -> list[dict[str, Any]]:
        """The rows of a query with `IN ({ids})` in it, the ids sent in chunks (SQLite caps a statement's
        parameters); `params` come before the ids. `times`: the query has that many parts, each with its `params`
        and then the ids."""
        found: list[dict[str, Any]] = []
        for start in range(0, len(ids), chunk):
            part = list(ids[start : start + chunk])
            found += self.rows(sql.format(ids=", ".join("?" * len(part))), [*params, *part] * times)
        return found

    def insert(self, table: str, rows: Sequence[dict[str, Any]]) -> None:
        """Insert rows (dicts with the same keys), each value encoded by its column's name."""
        if rows:
            columns = list(rows[0])
            values = [tuple(self.store.encode(c, row[c]) for c in columns) for row in rows]
            self.store.insert_rows(self.connection, table, columns, values)


class SqlFeedbackStore(ABC):
    """The feedback store (core.stores.FeedbackStore) over a SQL database; a dialect fills in the rest."""

    url: str
    MIGRATIONS: Sequence[str]

    # -- what a dialect provides --------------------------------------------------------------------------
    @abstractmethod
    def transaction(self, lock: str | None = None) -> AbstractContextManager[Tx]:
        """A transaction that commits on leaving and rolls back on an error. `lock` names a lock held until
        the end of the transaction, across every process that shares the database (`migrations`, `jobs`,
        `adapters`): what is read under it cannot change before the transaction's own write commits."""

    @abstractmethod
    def _read_version(self, tx: Tx) -> int: ...

    @abstractmethod
    def _write_version(self, tx: Tx, version: int) -> None: ...

    @abstractmethod
    def encode_time(self, epoch: float) -> Any: ...

    @abstractmethod
    def decode_time(self, value: Any) -> float: ...

    def encode_json(self, value: Any) -> Any:
        return json.dumps(value)

    def decode_json(self, value: Any) -> Any:
        return json.loads(value) if isinstance(value, str | bytes) else value

    def placeholders(self, sql: str) -> str:
        return sql

    def insert_rows(self, connection: Any, table: str, columns: Sequence[str], values: Sequence[tuple]) -> None:
        """Insert encoded rows in one go (a dialect may have a faster way than executemany)."""
        sql = f"INSERT INTO {table}({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        cursor = connection.cursor()
        try:
            cursor.executemany(self.placeholders(sql), values)
        finally:
            cursor.close()

    def after_erasure(self) -> None:  # noqa: B027 - a dialect that keeps old copies of rows removes them here
        """After a reader's rows were deleted and committed."""

    def after_copy(self, tx: Tx) -> None:  # noqa: B027 - most dialects have nothing to do
        """After rows were copied in with their ids (a dialect moves its id sequences past them)."""

    @abstractmethod
    def close(self) -> None:
        """Release the connections."""

    # -- the codec ----------------------------------------------------------------------------------------
    def encode(self, column: str, value: Any) -> Any:
        if value is None:
            return None
        if column in TIME_COLUMNS:
            return self.encode_time(value)
        if column in JSON_COLUMNS:
            return self.encode_json(value)
        if column in BOOL_COLUMNS:
            return bool(value)
        return value

    def decode(self, row: Any) -> dict[str, Any]:
        out = dict(row)
        for column, value in out.items():
            if value is None:
                continue
            if column in TIME_COLUMNS:
                out[column] = self.decode_time(value)
            elif column in JSON_COLUMNS:
                out[column] = self.decode_json(value)
            elif column in BOOL_COLUMNS:
                out[column] = bool(value)
        return out

    # -- schema -------------------------------------------------------------------------------------------
    @property
    def schema_version(self) -> int:
        with self.transaction() as tx:
            return self._read_version(tx)

    def schema_current(self) -> bool:
        return self.schema_version == len(self.MIGRATIONS)

    def migrate(self) -> None:
        """Apply the numbered migrations not applied yet, each in its own transaction under the migrations
        lock: of two instances starting at once, one migrates and the other then finds nothing to do."""
        for version, script in enumerate(self.MIGRATIONS, start=1):
            with self.transaction(lock="migrations") as tx:
                if self._read_version(tx) >= version:
                    continue
                for statement in filter(str.strip, script.split(";")):
                    tx.execute(statement)
                self._write_version(tx, version)

    # -- events -------------------------------------------------------------------------------------------
    def add_events(
        self, events: Sequence[Event], batch_key: str | None = None, now: float = 0.0, digest: str | None = None
    ) -> int:
        """Store a batch atomically: all of it or none of it. Returns how many were stored.

        A batch sent again with the same `batch_key` (a client retrying after a lost answer) stores nothing
        and returns 0: keys are remembered for a day from `now`; the same key with another batch (another
        `digest`) is a Conflict. An event that names a ranking counts once per (ranking, article, type): a
        repeat is not stored. Events of an erased reader are a Conflict while the tombstone is there."""
        with self.transaction() as tx:
            keys = list({erased_key(e.user_id) for e in events})
            gone = tx.rows_in("SELECT user_key FROM erased WHERE user_key IN ({ids})", [], keys)
            if gone:
                named = next(e.user_id for e in events if erased_key(e.user_id) == gone[0]["user_key"])
                raise Conflict(f"reader {named!r} was erased; their events are refused for a while")
            if batch_key is not None:
                tx.execute(
                    "DELETE FROM event_batches WHERE created_at < ?", [self.encode_time(now - BATCH_KEY_DAYS * 86400)]
                )
                claimed = tx.execute(
                    "INSERT INTO event_batches(batch_key, stored, created_at, digest) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT(batch_key) DO NOTHING",
                    [batch_key, len(events), self.encode_time(now), digest],
                )
                if claimed.rowcount == 0:
                    earlier = tx.row("SELECT digest FROM event_batches WHERE batch_key = ?", [batch_key])
                    if earlier is not None and earlier["digest"] != digest:
                        raise Conflict("this Idempotency-Key was used for another batch: send a new key")
                    return 0
            fresh = self._not_repeated(tx, events)
            tx.insert("events", [{c: getattr(e, c) for c in EVENT_COLUMNS} for e in fresh])
        return len(fresh)

    def _not_repeated(self, tx: Tx, events: Sequence[Event]) -> list[Event]:
        """The events to store: each (ranking, article, type) once, counting what is stored already."""
        ranked = list({e.ranking_id for e in events if e.ranking_id})
        stored = tx.rows_in("SELECT ranking_id, article_id, type FROM events WHERE ranking_id IN ({ids})", [], ranked)
        seen = {(r["ranking_id"], r["article_id"], r["type"]) for r in stored}
        fresh = []
        for e in events:
            key = (e.ranking_id, e.article_id, e.type)
            if e.ranking_id and key in seen:
                continue
            seen.add(key)
            fresh.append(e)
        return fresh

    def events(self, user_id: str, since: float | None = None, limit: int | None = None) -> list[Event]:
        """A reader's events in time order; `limit`: only the most recent that many (what a request may read)."""
        sql, params = f"SELECT {', '.join(EVENT_COLUMNS)}, id FROM events WHERE user_id = ?", [user_id]
        if since is not None:
            sql, params = sql + " AND ts >= ?", [*params, self.encode_time(since)]
        if limit is not None:
            sql, params = sql + " ORDER BY ts DESC, id DESC LIMIT ?", [*params, int(limit)]
        with self.transaction() as tx:
            rows = tx.rows(sql if limit is not None else sql + " ORDER BY ts, id", params)
        rows = sorted(rows, key=lambda r: (r["ts"], r["id"])) if limit is not None else rows
        return [Event(**{k: v for k, v in r.items() if k != "id"}) for r in rows]

    def click_counts(self, since: float) -> dict[str, int]:
        """Readers who clicked or liked each article since a time: the popularity signal. Readers, not
        clicks: a thousand clicks of one reader count once, so no single reader can make an article popular."""
        with self.transaction() as tx:
            rows = tx.rows(
                f"SELECT article_id, COUNT(DISTINCT user_id) AS n FROM events WHERE type IN ({CLICKED})"
                " AND ts >= ? GROUP BY article_id",
                [self.encode_time(since)],
            )
        return {r["article_id"]: r["n"] for r in rows}

    def shown_places(self, article_ids: Sequence[str], since: float) -> dict[str, dict[int, int]]:
        """Readers each article was shown to since a time, by the best place (1-based) each was shown it at in a
        recorded feed, or place 1 where they are known to have looked at it (an impression event from the platform;
        a click or a like, the readers the rate's numerator counts): the click-through rate's denominator, weighed
        by how often each place is looked at (feed.position.examined). Readers, not feeds: a reader shown an
        article in a hundred feeds counts once, at their best place."""
        if not article_ids:
            return {}
        with self.transaction() as tx:
            rows = tx.rows_in(
                "SELECT article_id, place, COUNT(*) AS n FROM (SELECT article_id, user_id, MIN(place) AS place FROM ("
                " SELECT i.article_id, r.user_id, i.position AS place FROM ranking_items i"
                " JOIN rankings r ON r.ranking_id = i.ranking_id WHERE r.created_at >= ? AND i.article_id IN ({ids})"
                " UNION ALL SELECT article_id, user_id, 1 AS place FROM events"
                f" WHERE type IN ('impression', {CLICKED}) AND ts >= ?"
                " AND article_id IN ({ids})) AS shown GROUP BY article_id, user_id) AS best GROUP BY article_id, place",
                [self.encode_time(since)], list(article_ids), times=2,
            )  # fmt: skip
        places: dict[str, dict[int, int]] = {}
        for r in rows:
            places.setdefault(r["article_id"], {})[int(r["place"])] = r["n"]
        return places

    def engagements(self, since: float, limit: int) -> list[tuple[str, str]]:
        """(reader, article) of the engagement events (click, like, share, comment) since a time, one per pair,
        the most recent first, at most `limit`: what the co-click signal is built from."""
        kinds = ", ".join(f"'{kind}'" for kind in sorted(ENGAGEMENT))
        with self.transaction() as tx:
            rows = tx.rows(
                f"SELECT user_id, article_id, MAX(ts) AS last FROM events WHERE type IN ({kinds}) AND ts >= ?"
                " GROUP BY user_id, article_id ORDER BY last DESC LIMIT ?",
                [self.encode_time(since), int(limit)],
            )
        return [(r["user_id"], r["article_id"]) for r in rows]

    def user_ids(self, since: float | None = None) -> list[str]:
        """Readers with events since a time, sorted."""
        sql, params = "SELECT DISTINCT user_id FROM events", []
        if since is not None:
            sql, params = sql + " WHERE ts >= ?", [self.encode_time(since)]
        with self.transaction() as tx:
            return [r["user_id"] for r in tx.rows(sql + " ORDER BY user_id", params)]

    def known_users(self) -> list[str]:
        """Every reader newsrank holds anything on: events, preferences or rankings, sorted."""
        with self.transaction() as tx:
            rows = tx.rows(
                "SELECT user_id FROM events UNION SELECT user_id FROM users UNION SELECT user_id FROM rankings"
                " ORDER BY 1"
            )
        return [r["user_id"] for r in rows]

    def known_among(self, user_ids: Sequence[str]) -> set[str]:
        """Which of these readers newsrank holds anything on (events, preferences or rankings)."""
        ids = list(dict.fromkeys(user_ids))
        with self.transaction() as tx:
            rows = tx.rows_in(
                "SELECT user_id FROM events WHERE user_id IN ({ids}) UNION SELECT user_id FROM users WHERE user_id"
                " IN ({ids}) UNION SELECT user_id FROM rankings WHERE user_id IN ({ids})", [], ids, times=3,
            )  # fmt: skip
        return {r["user_id"] for r in rows}

    def count_events(self) -> int:
        with self.transaction() as tx:
            return tx.row("SELECT COUNT(*) AS n FROM events")["n"]

    def known_user(self, user_id: str) -> bool:
        with self.transaction() as tx:
            return (
                tx.row(
                    "SELECT 1 AS known FROM users WHERE user_id = ? UNION ALL SELECT 1 FROM events WHERE user_id = ?"
                    " UNION ALL SELECT 1 FROM rankings WHERE user_id = ? UNION ALL SELECT 1 FROM relevance"
                    " WHERE user_id = ? LIMIT 1",
                    [user_id] * 4,
                )
                is not None
            )

    # -- explicit preferences -----------------------------------------------------------------------------
    def preferences(self, user_id: str) -> Preferences:
        with self.transaction() as tx:
            row = tx.row("SELECT interests, mutes, follows FROM users WHERE user_id = ?", [user_id])
        return Preferences() if row is None else Preferences.newest(row["interests"], row["mutes"], row["follows"])

    def set_preferences(
        self, user_id: str, prefs: Preferences, now: float, change: dict[str, Any] | None = None
    ) -> None:
        """Replace a reader's preferences. `change`: what a chat request changed (for its "undo"), kept with them;
        any other write forgets it. A Conflict for an erased reader while the tombstone is there."""
        with self.transaction() as tx:
            if tx.row("SELECT 1 AS gone FROM erased WHERE user_key = ?", [erased_key(user_id)]):
                raise Conflict(f"reader {user_id!r} was erased; their preferences are refused for a while")
            tx.execute(
                "INSERT INTO users(user_id, interests, mutes, follows, updated_at, last_change)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(user_id) DO UPDATE SET interests = excluded.interests,"
                " mutes = excluded.mutes, follows = excluded.follows, updated_at = excluded.updated_at,"
                " last_change = excluded.last_change",
                [
                    user_id,
                    self.encode_json(list(prefs.interests)),
                    self.encode_json(list(prefs.mutes)),
                    self.encode_json(list(prefs.follows)),
                    self.encode_time(now),
                    self.encode_json(change) if change is not None else None,
                ],
            )

    def last_change(self, user_id: str) -> dict[str, Any] | None:
        """The preference change a chat request made last (set_preferences' `change`), if nothing changed since."""
        with self.transaction() as tx:
            row = tx.row("SELECT last_change FROM users WHERE user_id = ?", [user_id])
        return None if row is None or row["last_change"] is None else row["last_change"]

    # -- ranking records ----------------------------------------------------------------------------------
    def record_ranking(self, record: RankingRecord) -> bool:
        """Store a ranking record; False (nothing stored) for a reader erased while the feed was being made."""
        # shallow: the record's fields are plain values (asdict deep-copied every item twice: a third of a feed's time)
        head = {f.name: getattr(record, f.name) for f in fields(record) if f.name != "items"}
        items = [{"ranking_id": record.ranking_id, **{f.name: getattr(item, f.name) for f in fields(item)}}
                 for item in record.items]  # fmt: skip
        with self.transaction() as tx:
            if tx.row("SELECT 1 AS gone FROM erased WHERE user_key = ?", [erased_key(record.user_id)]):
                return False
            tx.insert("rankings", [head])
            tx.insert("ranking_items", items)
        return True

    def ranking(self, ranking_id: str) -> RankingRecord:
        with self.transaction() as tx:
            head = tx.row("SELECT * FROM rankings WHERE ranking_id = ?", [ranking_id])
            if head is None:
                raise NotFound(f"no ranking {ranking_id!r}")
            items = tx.rows(
                f"SELECT {', '.join(ITEM_COLUMNS[1:])} FROM ranking_items WHERE ranking_id = ? ORDER BY position",
                [ranking_id],
            )
        return RankingRecord(
            **{**head, "degraded": tuple(head["degraded"])},
            items=tuple(RankedItem(**{**i, **{k: tuple(i[k]) for k in ("grounded_in", "chosen_over")}}) for i in items),
        )

    def set_explanations(self, ranking_id: str, explanations: dict[int, tuple[str, str]]) -> None:
        """Replace the explanations of a ranking's items, by position: (text, source)."""
        with self.transaction() as tx:
            for position, (text, source) in explanations.items():
                tx.execute(
                    "UPDATE ranking_items SET explanation = ?, explanation_source = ? WHERE ranking_id = ?"
                    " AND position = ?",
                    [text, source, ranking_id, position],
                )

    def ranking_owners(self, ranking_ids: Sequence[str]) -> dict[str, tuple[str, frozenset[str]]]:
        """The reader each known ranking was made for, and the articles it showed; unknown ids are absent."""
        with self.transaction() as tx:
            rows = tx.rows_in(
                "SELECT r.ranking_id, r.user_id, i.article_id FROM rankings r LEFT JOIN ranking_items i"
                " ON i.ranking_id = r.ranking_id WHERE r.ranking_id IN ({ids})",
                [],
                list(dict.fromkeys(ranking_ids)),
            )
        shown: dict[str, tuple[str, set[str]]] = {}
        for r in rows:
            shown.setdefault(r["ranking_id"], (r["user_id"], set()))[1].add(r["article_id"] or "")
        return {rid: (user, frozenset(a for a in articles if a)) for rid, (user, articles) in shown.items()}

    def latest_ranking_with(self, user_id: str, article_id: str) -> RankingRecord:
        with self.transaction() as tx:
            row = tx.row(
                "SELECT r.ranking_id FROM rankings r JOIN ranking_items i ON i.ranking_id = r.ranking_id"
                " WHERE r.user_id = ? AND i.article_id = ? ORDER BY r.created_at DESC LIMIT 1",
                [user_id, article_id],
            )
        if row is None:
            raise NotFound(f"article {article_id!r} was never recommended to user {user_id!r}")
        return self.ranking(row["ranking_id"])

    def latest_ranking(self, user_id: str) -> RankingRecord:
        with self.transaction() as tx:
            row = tx.row(
                "SELECT ranking_id FROM rankings WHERE user_id = ? ORDER BY created_at DESC LIMIT 1", [user_id]
            )
        if row is None:
            raise NotFound(f"no ranking for user {user_id!r}")
        return self.ranking(row["ranking_id"])

    def rankings_for(self, user_id: str) -> list[RankingRecord]:
        with self.transaction() as tx:
            rows = tx.rows("SELECT ranking_id FROM rankings WHERE user_id = ? ORDER BY created_at", [user_id])
        return [self.ranking(r["ranking_id"]) for r in rows]

    def feed_outcomes(self, since: float, until: float) -> list[FeedOutcome]:
        """Every feed made in [since, until) with what its reader did with it: clicks, likes, comments and shares
        on its items and ratings of it or of its items, counted from the events that name the ranking."""
        # searches are the reader's own asks, not feeds: they count in no feed's outcome (the pattern is a parameter:
        # a literal % is a placeholder to PostgreSQL's driver)
        window = [self.encode_time(since), self.encode_time(until), "search%"]
        made = "SELECT ranking_id FROM rankings WHERE created_at >= ? AND created_at < ? AND strategy NOT LIKE ?"
        with self.transaction() as tx:
            heads = tx.rows(
                "SELECT r.ranking_id, r.created_at, r.arm, r.intra_list_distance, r.explored_pair, r.user_id,"
                " r.experiment, COUNT(i.position) AS shown,"
                " COUNT(DISTINCT i.category) AS categories, COALESCE(SUM(i.age_hours), 0) AS shown_age_hours"
                " FROM rankings r LEFT JOIN ranking_items i ON i.ranking_id = r.ranking_id"
                " WHERE r.created_at >= ? AND r.created_at < ? AND r.strategy NOT LIKE ?"
                " GROUP BY r.ranking_id, r.created_at, r.arm, r.intra_list_distance, r.explored_pair, r.user_id,"
                " r.experiment"
                " ORDER BY r.created_at",
                window,
            )
            acts = tx.rows(
                # `|| ''` keeps the planner off the article index (hundreds of rows an article) and on the
                # ranking's own items (ten or so): 10x faster at 20,000 feeds on SQLite (benchmarks/operator_stats.py)
                "SELECT e.ranking_id, e.type, e.value, e.article_id, i.position, i.age_hours FROM events e"
                " LEFT JOIN ranking_items i ON i.ranking_id = e.ranking_id AND i.article_id || '' = e.article_id"
                f" WHERE e.ranking_id IN ({made}) AND e.type IN ('click', 'like', 'comment', 'share', 'rating',"
                " 'dislike', 'skip')",
                window,
            )
        by_feed: dict[str, list[dict[str, Any]]] = {}
        for act in acts:
            by_feed.setdefault(act["ranking_id"], []).append(act)
        outcomes = []
        for head in heads:
            mine = by_feed.get(head["ranking_id"], [])
            clicked = {a["position"]: a["age_hours"] for a in mine if a["type"] == "click" and a["position"]}
            count = Counter(a["type"] for a in mine)
            outcomes.append(FeedOutcome(
                **head, clicked=tuple(sorted(clicked.items())), likes=count["like"], comments=count["comment"],
                shares=count["share"], ratings=tuple(a["value"] for a in mine if a["type"] == "rating"),
                dislikes=count["dislike"], skips=count["skip"],
            ))  # fmt: skip
        return outcomes

    def article_counts(self, since: float, until: float) -> dict[str, tuple[str, int, int]]:
        """Per article shown in a feed made in [since, until): its title, the feeds that showed it and the feeds
        in which it was clicked."""
        window = [self.encode_time(since), self.encode_time(until)]
        with self.transaction() as tx:
            shown = tx.rows(
                "SELECT i.article_id, MAX(i.title) AS title, COUNT(*) AS n FROM ranking_items i JOIN rankings r"
                " ON r.ranking_id = i.ranking_id WHERE r.created_at >= ? AND r.created_at < ? GROUP BY i.article_id",
                window,
            )
            clicked = tx.rows(
                "SELECT e.article_id, COUNT(DISTINCT e.ranking_id) AS n FROM events e JOIN rankings r"
                " ON r.ranking_id = e.ranking_id WHERE e.type = 'click' AND r.created_at >= ? AND r.created_at < ?"
                " GROUP BY e.article_id",
                window,
            )
        clicks = {r["article_id"]: r["n"] for r in clicked}
        return {r["article_id"]: (r["title"], r["n"], clicks.get(r["article_id"], 0)) for r in shown}

    # -- a reader's data as a whole -----------------------------------------------------------------------
    def export_user(self, user_id: str) -> dict[str, Any]:
        """Everything held on one reader: preferences, events, the rankings made for them and the LLM's
        relevance computed for them."""
        with self.transaction() as tx:
            relevance = tx.rows(
                "SELECT article_id, score, scored_at FROM relevance WHERE user_id = ? ORDER BY scored_at, article_id",
                [user_id],
            )
        return {
            "user_id": user_id,
            "preferences": asdict(self.preferences(user_id)),
            "events": [asdict(e) for e in self.events(user_id)],
            "rankings": [asdict(r) for r in self.rankings_for(user_id)],
            "relevance": relevance,
        }

    def delete_user(self, user_id: str, now: float = 0.0) -> dict[str, int]:
        """Erase a reader in one transaction: events, preferences, rankings (their items cascade), the LLM
        relevance computed for them and their waiting scoring work; and leave a tombstone, so that work in flight
        for them (a feed being made, the scorer scoring them) writes nothing after."""
        with self.transaction() as tx:
            tx.execute(
                "INSERT INTO erased(user_key, erased_at) VALUES (?, ?) ON CONFLICT(user_key) DO UPDATE SET"
                " erased_at = excluded.erased_at",
                [erased_key(user_id), self.encode_time(now)],
            )
            counts = {
                table: tx.execute(f"DELETE FROM {table} WHERE user_id = ?", [user_id]).rowcount
                for table in ("events", "users", "rankings", "relevance")
            }
            tx.execute("DELETE FROM scoring_queue WHERE subject = ?", [user_id])
        self.after_erasure()
        return counts

    def forget_before(
        self, events_before: float | None, rankings_before: float | None, tombstones_before: float | None = None
    ) -> dict[str, int]:
        """Retention: delete the events and the ranking records (their items cascade) older than these times
        (None: keep them), and erased readers' tombstones older than `tombstones_before`. Returns how many events
        and rankings were deleted."""
        counts = {"events": 0, "rankings": 0}
        with self.transaction() as tx:
            if tombstones_before is not None:
                tx.execute("DELETE FROM erased WHERE erased_at < ?", [self.encode_time(tombstones_before)])
            if events_before is not None:
                counts["events"] = tx.execute(
                    "DELETE FROM events WHERE ts < ?", [self.encode_time(events_before)]
                ).rowcount
            if rankings_before is not None:
                counts["rankings"] = tx.execute(
                    "DELETE FROM rankings WHERE created_at < ?", [self.encode_time(rankings_before)]
                ).rowcount
        if any(counts.values()):
            self.after_erasure()
        return counts

    # -- LLM relevance computed ahead of requests ---------------------------------------------------------
    def cached_relevance(self, user_id: str, scorer: str, article_ids: Sequence[str]) -> dict[str, CachedScore]:
        """The stored relevance of these articles for this reader under this scorer (model, adapter, prompt);
        articles never scored are absent."""
        with self.transaction() as tx:
            rows = tx.rows_in(
                "SELECT article_id, score, profile_key, scored_at FROM relevance WHERE user_id = ? AND scorer = ?"
                " AND article_id IN ({ids})",
                [user_id, scorer],
                list(dict.fromkeys(article_ids)),
            )
        return {r.pop("article_id"): CachedScore(**r) for r in rows}

    def shared_relevance(
        self, scorer: str, profile_key: str, article_ids: Sequence[str], since: float
    ) -> dict[str, float]:
        """Scores of these articles that any reader got under this scorer and this very profile (the digest of
        its text) since `since`, the latest of each."""
        with self.transaction() as tx:
            rows = tx.rows_in(
                "SELECT article_id, score FROM relevance WHERE scorer = ? AND profile_key = ? AND scored_at >= ?"
                " AND article_id IN ({ids}) ORDER BY scored_at",
                [scorer, profile_key, self.encode_time(since)],
                list(dict.fromkeys(article_ids)),
            )
        return {r["article_id"]: r["score"] for r in rows}

    def store_relevance(
        self, user_id: str, scorer: str, profile_key: str, scores: dict[str, float], now: float
    ) -> None:
        """Keep a reader's freshly computed relevance, replacing what an earlier profile gave the same articles;
        nothing for a reader erased while the scores were being computed."""
        with self.transaction() as tx:
            if tx.row("SELECT 1 AS gone FROM erased WHERE user_key = ?", [erased_key(user_id)]):
                return
            for article_id, score in scores.items():
                tx.execute(
                    "INSERT INTO relevance(user_id, scorer, article_id, score, profile_key, scored_at)"
                    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(user_id, scorer, article_id) DO UPDATE SET"
                    " score = excluded.score, profile_key = excluded.profile_key, scored_at = excluded.scored_at",
                    [user_id, scorer, article_id, float(score), profile_key, self.encode_time(now)],
                )

    def last_scored(self, scorer: str, user_ids: Sequence[str]) -> dict[str, float]:
        """When each of these readers was last scored under `scorer`; readers never scored are absent."""
        with self.transaction() as tx:
            rows = tx.rows_in(
                "SELECT user_id, MAX(scored_at) AS scored_at FROM relevance WHERE scorer = ? AND user_id IN ({ids})"
                " GROUP BY user_id",
                [scorer],
                list(dict.fromkeys(user_ids)),
            )
        return {r["user_id"]: r["scored_at"] for r in rows}

    def forget_relevance(self, before: float) -> int:
        """Drop relevance computed before a time (articles long out of the window, readers long gone)."""
        with self.transaction() as tx:
            return tx.execute("DELETE FROM relevance WHERE scored_at < ?", [self.encode_time(before)]).rowcount

    def scores_written(self, since: float) -> int:
        with self.transaction() as tx:
            return tx.row("SELECT COUNT(*) AS n FROM relevance WHERE scored_at >= ?", [self.encode_time(since)])["n"]

    def active_readers(self, since: float) -> dict[str, float]:
        """Readers with a profile to score who asked for a feed or sent an event since a time, with when they
        last did (a reader whose feeds were all cold-start ones has nothing for the LLM to judge by)."""
        with self.transaction() as tx:
            rows = tx.rows(
                "SELECT user_id, MAX(t) AS ts FROM (SELECT user_id, MAX(created_at) AS t FROM rankings"
                " WHERE created_at >= ? AND cold_start = ? GROUP BY user_id UNION ALL SELECT user_id, MAX(ts) AS t"
                " FROM events WHERE ts >= ? GROUP BY user_id) AS seen GROUP BY user_id",
                [self.encode_time(since), False, self.encode_time(since)],
            )
        return {r["user_id"]: r["ts"] for r in rows}

    # -- the background scorer's queue --------------------------------------------------------------------
    def request_scoring(self, tasks: Sequence[ScoringTask], now: float, limit: int, again: bool = True) -> int:
        """Ask for work: a task already waiting is coalesced (its priority raised, its ask counted), never
        duplicated; with `again`, one running now runs once more after. Past `limit` waiting tasks, unclaimed ones
        are dropped from the client (`owner`) with the most waiting, and theirs only: explanations first, then
        rescorings of stale scores, then the lowest priority (a reader's next request or the sweep asks again). A
        client's flood never pushes out another's task. Tasks for erased readers are not queued. Returns how many
        were dropped."""
        counted = "scoring_queue.requests + 1" if again else "scoring_queue.requests"
        with self.transaction() as tx:
            gone = {r["user_key"] for r in tx.rows_in("SELECT user_key FROM erased WHERE user_key IN ({ids})", [],
                                                     list({erased_key(t.subject) for t in tasks}))}  # fmt: skip
            for task in tasks:
                if erased_key(task.subject) in gone:
                    continue
                tx.execute(
                    "INSERT INTO scoring_queue(kind, subject, priority, requests, requested_at, owner)"
                    f" VALUES (?, ?, ?, 1, ?, ?) ON CONFLICT(kind, subject) DO UPDATE SET requests = {counted},"
                    " priority = CASE WHEN excluded.priority > scoring_queue.priority THEN excluded.priority"
                    " ELSE scoring_queue.priority END",
                    [task.kind, task.subject, task.priority, self.encode_time(now), task.owner],
                )
            over = tx.row("SELECT COUNT(*) AS n FROM scoring_queue")["n"] - limit
            if over <= 0:
                return 0
            waiting = {r["owner"]: r["n"] for r in tx.rows(
                "SELECT owner, COUNT(*) AS n FROM scoring_queue WHERE claimed_by IS NULL GROUP BY owner")}  # fmt: skip
            dropped = 0
            for owner, n in largest_first(waiting, over).items():
                dropped += tx.execute(
                    "DELETE FROM scoring_queue WHERE (kind, subject) IN (SELECT kind, subject FROM scoring_queue"
                    f" WHERE claimed_by IS NULL AND owner = ? ORDER BY {KIND_RANK} DESC, priority, subject LIMIT ?)",
                    [owner, n],
                ).rowcount
            return dropped

    def claim_scoring(self, worker: str, now: float, lease_seconds: float) -> ScoringTask | None:
        """Take the next task for `worker`: from the client (`owner`) served least recently, so that clients take
        turns whatever each has waiting; within a client, readers' missing scores, then their stale scores, then
        explanations, each the most recently active first. A task claimed by another worker is not handed out
        again until its lease ran out (its worker died), so two workers never run the same task at once."""
        with self.transaction(lock="scoring") as tx:
            row = tx.row(
                "SELECT q.kind, q.subject, q.priority, q.requests, q.requested_at, q.owner FROM scoring_queue q"
                " LEFT JOIN scoring_owners o ON o.owner = q.owner WHERE q.claimed_by IS NULL OR q.claimed_at < ?"
                f" ORDER BY o.served_at IS NOT NULL, o.served_at, {KIND_RANK}, q.priority DESC, q.subject LIMIT 1",
                [self.encode_time(now - lease_seconds)],
            )
            if row is None:
                return None
            tx.execute(
                "UPDATE scoring_queue SET claimed_by = ?, claimed_requests = requests, claimed_at = ?"
                " WHERE kind = ? AND subject = ?",
                [worker, self.encode_time(now), row["kind"], row["subject"]],
            )
            tx.execute(
                "INSERT INTO scoring_owners(owner, served_at) VALUES (?, ?) ON CONFLICT(owner) DO UPDATE SET"
                " served_at = excluded.served_at",
                [row["owner"], self.encode_time(now)],
            )
        return ScoringTask(**row)

    def finish_scoring(self, task: ScoringTask, worker: str) -> None:
        """The worker is done with a task: remove it, unless it was asked for again meanwhile: then it waits
        again, for any worker. (A task that failed is left claimed: it is retried when its lease runs out.)"""
        key = [task.kind, task.subject, worker]
        with self.transaction() as tx:
            removed = tx.execute(
                "DELETE FROM scoring_queue WHERE kind = ? AND subject = ? AND claimed_by = ?"
                " AND requests = claimed_requests",
                key,
            ).rowcount
            if not removed:
                tx.execute(
                    "UPDATE scoring_queue SET claimed_by = NULL, claimed_requests = NULL, claimed_at = NULL"
                    " WHERE kind = ? AND subject = ? AND claimed_by = ?",
                    key,
                )

    def scoring_queue(self) -> dict[str, tuple[int, float | None]]:
        """Per kind of task: how many wait (claimed or not), and since when the oldest has waited."""
        with self.transaction() as tx:
            rows = tx.rows(
                "SELECT kind, COUNT(*) AS n, MIN(requested_at) AS requested_at FROM scoring_queue GROUP BY kind"
            )
        return {r["kind"]: (r["n"], r["requested_at"]) for r in rows}

    # -- background jobs ----------------------------------------------------------------------------------
    def claim_job(self, job: Job) -> None:
        """Record a new running job, unless a job of its kind is running already (Conflict), across every
        instance that shares the database."""
        with self.transaction(lock="jobs") as tx:
            running = tx.row("SELECT job_id FROM jobs WHERE kind = ? AND status = 'running'", [job.kind])
            if running is not None:
                raise Conflict(f"{job.kind} job {running['job_id']} is still running; one job runs at a time")
            tx.insert("jobs", [asdict(job)])

    def update_job(self, job: Job) -> bool:
        """Write a running job's progress or outcome. A job that is no longer running (an instance found its
        runner gone and marked it) stays as it is: returns False then."""
        with self.transaction() as tx:
            return (
                tx.execute(
                    "UPDATE jobs SET status = ?, finished_at = ?, exit_code = ?, pid = ?, heartbeat_at = ?,"
                    " log_tail = ? WHERE job_id = ? AND status = 'running'",
                    [
                        job.status,
                        self.encode("finished_at", job.finished_at),
                        job.exit_code,
                        job.pid,
                        self.encode("heartbeat_at", job.heartbeat_at),
                        job.log_tail,
                        job.job_id,
                    ],
                ).rowcount
                == 1
            )

    def interrupt_jobs(self, silent_since: float, now: float, instance: str | None = None) -> int:
        """Mark interrupted every running job whose runner has not reported since `silent_since` (and, with
        `instance`, every running job of that instance): their runner is gone. Returns how many."""
        sql = "UPDATE jobs SET status = 'interrupted', finished_at = ? WHERE status = 'running' AND ("
        sql += "COALESCE(heartbeat_at, created_at) < ?" + (" OR instance = ?)" if instance else ")")
        params = [self.encode_time(now), self.encode_time(silent_since), *([instance] if instance else [])]
        with self.transaction() as tx:
            return tx.execute(sql, params).rowcount

    def job(self, job_id: str) -> Job:
        with self.transaction() as tx:
            row = tx.row("SELECT * FROM jobs WHERE job_id = ?", [job_id])
        if row is None:
            raise NotFound(f"no job {job_id!r}")
        return Job(**row)

    def jobs(self, status: str | None = None) -> list[Job]:
        sql, params = "SELECT * FROM jobs", []
        if status is not None:
            sql, params = sql + " WHERE status = ?", [status]
        with self.transaction() as tx:
            return [Job(**r) for r in tx.rows(sql + " ORDER BY created_at DESC", params)]

    # -- the adapter registry's state ---------------------------------------------------------------------
    def adapter_versions(self, name: str | None = None) -> list[AdapterVersion]:
        """Registered versions, by name then version; `path` is relative to the adapters directory."""
        sql = (
            "SELECT v.name, v.version, v.id, a.active FROM adapter_versions v JOIN adapters a ON a.name = v.name"
            + (" WHERE v.name = ?" if name is not None else "")
            + " ORDER BY v.name, v.version"
        )
        with self.transaction() as tx:
            rows = tx.rows(sql, [name] if name is not None else [])
        return [
            AdapterVersion(r["name"], v := r["version"], r["id"], Path(r["name"], f"v{v}"), r["active"] == v)
            for r in rows
        ]

    def add_adapter_version(
        self, name: str, place: Callable[[int, int], None], activate: bool, now: float, adapter_id: int | None = None
    ) -> tuple[int, int]:
        """Register the next version of `name` and (optionally) make it active. `place(version, id)` puts the
        files where the version lives; it runs inside the transaction, so a failed copy registers nothing.
        The id is the next unused one unless given (importing an older registry)."""
        with self.transaction(lock="adapters") as tx:
            tx.execute("INSERT INTO adapters(name, active, history) VALUES (?, NULL, ?) ON CONFLICT(name) DO NOTHING",
                       [name, self.encode_json([])])  # fmt: skip
            next_version = "SELECT COALESCE(MAX(version), 0) + 1 AS v FROM adapter_versions WHERE name = ?"
            version = tx.row(next_version, [name])["v"]
            if adapter_id is None:
                adapter_id = tx.row("SELECT COALESCE(MAX(id), 0) + 1 AS id FROM adapter_versions")["id"]
            place(version, adapter_id)
            tx.insert("adapter_versions", [{"name": name, "version": version, "id": adapter_id, "created_at": now}])
            if activate:
                self._activate(tx, name, version)
        return version, adapter_id

    def activate_adapter(self, name: str, version: int | None = None) -> None:
        """Make a version (default: the newest) the one `name` serves."""
        with self.transaction(lock="adapters") as tx:
            known = [r["version"] for r in tx.rows("SELECT version FROM adapter_versions WHERE name = ?", [name])]
            if not known or (version is not None and version not in known):
                raise NotFound(f"no adapter {name if version is None else f'{name}@{version}'!r}")
            self._activate(tx, name, max(known) if version is None else version)

    def rollback_adapter(self, name: str) -> None:
        """Make the previously active version active again."""
        with self.transaction(lock="adapters") as tx:
            row = tx.row("SELECT history FROM adapters WHERE name = ?", [name])
            if row is None or len(row["history"]) < 2:
                raise NotFound(f"adapter {name!r} has no earlier active version to roll back to")
            history = row["history"][:-1]
            tx.execute("UPDATE adapters SET active = ?, history = ? WHERE name = ?",
                       [history[-1], self.encode_json(history), name])  # fmt: skip

    def _activate(self, tx: Tx, name: str, version: int) -> None:
        row = tx.row("SELECT active, history FROM adapters WHERE name = ?", [name])
        if row["active"] != version:
            tx.execute("UPDATE adapters SET active = ?, history = ? WHERE name = ?",
                       [version, self.encode_json([*row["history"], version]), name])  # fmt: skip

    # -- a whole store ------------------------------------------------------------------------------------
    def count_engagements(self, since: float) -> int:
        """Engagement events (click, like, share, comment) since a time: what schedules retraining."""
        kinds = ", ".join(f"'{kind}'" for kind in sorted(ENGAGEMENT))
        with self.transaction() as tx:
            return tx.row(f"SELECT COUNT(*) AS n FROM events WHERE type IN ({kinds}) AND ts >= ?",
                          [self.encode_time(since)])["n"]  # fmt: skip

    # -- the learning loop's history ----------------------------------------------------------------------
    def add_loop_event(self, kind: str, adapter: str | None, details: dict[str, Any], at: float) -> None:
        with self.transaction() as tx:
            tx.insert("loop_events", [{"at": at, "kind": kind, "adapter": adapter, "details": details}])

    def loop_events(self, limit: int = 100) -> list[dict[str, Any]]:
        """The learning loop's history, the newest first."""
        with self.transaction() as tx:
            return tx.rows("SELECT at, kind, adapter, details FROM loop_events ORDER BY at DESC, id DESC LIMIT ?",
                           [int(limit)])  # fmt: skip

    def check_value(self, name: str, value: str) -> str:
        """The value every instance sharing this store agreed on for `name`: `value` if none was set yet (then it
        is set), else the one set first. A caller whose value differs must not go on (Newsrank refuses to start)."""
        with self.transaction(lock="checks") as tx:
            tx.execute("INSERT INTO service_checks(name, value) VALUES (?, ?) ON CONFLICT(name) DO NOTHING",
                       [name, value])  # fmt: skip
            return tx.row("SELECT value FROM service_checks WHERE name = ?", [name])["value"]

    def table_rows(self, table: str, batch: int = 1000) -> Iterator[list[dict[str, Any]]]:
        """Every row of a table, decoded, in batches (to copy a store into another)."""
        if table not in TABLES:
            raise InvalidInput(f"unknown table {table!r}")
        offset = 0
        while True:
            with self.transaction() as tx:
                rows = tx.rows(f"SELECT * FROM {table} ORDER BY 1, 2 LIMIT ? OFFSET ?", [batch, offset])
            if not rows:
                return
            yield rows
            offset += len(rows)

    def count_rows(self, table: str) -> int:
        if table not in TABLES:
            raise InvalidInput(f"unknown table {table!r}")
        with self.transaction() as tx:
            return tx.row(f"SELECT COUNT(*) AS n FROM {table}")["n"]
