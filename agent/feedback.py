"""The feedback store: reader events, explicit preferences and ranking records, in SQLite.

WAL mode with synchronous=FULL: a call that returned has been committed durably, so an API that
acknowledges events after `add_events` never loses them. The schema moves forward through numbered
migrations recorded in PRAGMA user_version.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from agent.errors import InvalidInput, NotFound

EVENT_TYPES = ("impression", "click", "like", "dislike", "skip", "dwell")

MIGRATIONS: list[str] = [
    # 1: events, explicit preferences, rankings
    """
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        user_id TEXT NOT NULL,
        article_id TEXT NOT NULL,
        type TEXT NOT NULL,
        ts REAL NOT NULL,
        dwell_seconds REAL,
        ranking_id TEXT
    );
    CREATE INDEX events_user_ts ON events(user_id, ts);
    CREATE INDEX events_type_ts ON events(type, ts);
    CREATE TABLE users (
        user_id TEXT PRIMARY KEY,
        interests TEXT NOT NULL DEFAULT '[]',
        mutes TEXT NOT NULL DEFAULT '[]',
        updated_at REAL NOT NULL
    );
    CREATE TABLE rankings (
        ranking_id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL,
        created_at REAL NOT NULL,
        strategy TEXT NOT NULL,
        prompt_version TEXT NOT NULL,
        backend TEXT NOT NULL,
        model TEXT NOT NULL,
        adapter TEXT,
        weights TEXT NOT NULL,
        profile_text TEXT NOT NULL,
        cold_start INTEGER NOT NULL
    );
    CREATE INDEX rankings_user ON rankings(user_id, created_at);
    CREATE TABLE ranking_items (
        ranking_id TEXT NOT NULL REFERENCES rankings(ranking_id) ON DELETE CASCADE,
        position INTEGER NOT NULL,
        article_id TEXT NOT NULL,
        title TEXT NOT NULL,
        score REAL NOT NULL,
        relevance REAL NOT NULL,
        diversity REAL NOT NULL,
        freshness REAL NOT NULL,
        similarity REAL NOT NULL,
        affinity REAL NOT NULL,
        age_hours REAL NOT NULL,
        explanation TEXT,
        explanation_source TEXT,
        grounded_in TEXT NOT NULL DEFAULT '[]',
        PRIMARY KEY (ranking_id, position)
    );
    CREATE INDEX ranking_items_article ON ranking_items(article_id);
    """,
    # 2: the popularity signal joins the blend
    """
    ALTER TABLE ranking_items ADD COLUMN popularity REAL NOT NULL DEFAULT 0;
    """,
    # 3: background jobs started from the API (training)
    """
    CREATE TABLE jobs (
        job_id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        args TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at REAL NOT NULL,
        finished_at REAL,
        exit_code INTEGER,
        log_path TEXT NOT NULL,
        pid INTEGER
    );
    """,
]


@dataclass(frozen=True)
class Event:
    user_id: str
    article_id: str
    type: str
    ts: float
    dwell_seconds: float | None = None
    ranking_id: str | None = None

    def __post_init__(self) -> None:
        if self.type not in EVENT_TYPES:
            raise InvalidInput(f"unknown event type {self.type!r}; expected one of {', '.join(EVENT_TYPES)}")
        if not self.user_id or not self.article_id:
            raise InvalidInput("an event needs a user_id and an article_id")
        if self.dwell_seconds is not None and self.dwell_seconds < 0:
            raise InvalidInput("dwell_seconds must be >= 0")


@dataclass(frozen=True)
class Preferences:
    interests: tuple[str, ...] = ()
    mutes: tuple[str, ...] = ()


@dataclass(frozen=True)
class RankedItem:
    """Every number behind one slot of a feed: it powers explanations, audits and training export."""

    position: int
    article_id: str
    title: str
    score: float
    relevance: float
    diversity: float
    freshness: float
    similarity: float
    affinity: float
    age_hours: float
    explanation: str | None = None
    explanation_source: str | None = None  # "llm" or "template"
    grounded_in: tuple[str, ...] = ()
    popularity: float = 0.0


ITEM_COLUMNS = ("ranking_id", *(f.name for f in fields(RankedItem)))


def _item_row(ranking_id: str, item: RankedItem) -> tuple:
    values = asdict(item)
    values["grounded_in"] = json.dumps(list(item.grounded_in))
    return (ranking_id, *values.values())


@dataclass(frozen=True)
class RankingRecord:
    ranking_id: str
    user_id: str
    created_at: float
    strategy: str
    prompt_version: str
    backend: str
    model: str
    adapter: str | None
    weights: dict[str, float]
    profile_text: str
    cold_start: bool
    items: tuple[RankedItem, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Job:
    """A background job (training) and what became of it; its output goes to `log_path`."""

    job_id: str
    kind: str
    args: list[str]
    status: str  # running, succeeded, failed, interrupted
    created_at: float
    finished_at: float | None = None
    exit_code: int | None = None
    log_path: str = ""
    pid: int | None = None  # the child process while it runs


class FeedbackStore:
    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA busy_timeout=10000")
        self.migrate()

    # -- schema -------------------------------------------------------------------------------------------
    @property
    def schema_version(self) -> int:
        return self._db.execute("PRAGMA user_version").fetchone()[0]

    def migrate(self) -> None:
        with self._lock:
            for version, script in enumerate(MIGRATIONS, start=1):
                if self.schema_version >= version:
                    continue
                # one transaction per migration: a failed one leaves the previous version intact
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    for statement in filter(str.strip, script.split(";")):
                        self._db.execute(statement)
                    self._db.execute(f"PRAGMA user_version = {version}")
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise

    def close(self) -> None:
        self._db.close()

    def _write(self, sql: str, rows: Iterable[Sequence]) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(sql, rows)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    # -- events -------------------------------------------------------------------------------------------
    def add_events(self, events: Sequence[Event]) -> int:
        """Store a batch atomically: all of it or none of it. Returns how many were stored."""
        self._write(
            "INSERT INTO events(user_id, article_id, type, ts, dwell_seconds, ranking_id) VALUES (?,?,?,?,?,?)",
            [(e.user_id, e.article_id, e.type, e.ts, e.dwell_seconds, e.ranking_id) for e in events],
        )
        return len(events)

    def events(self, user_id: str, since: float | None = None) -> list[Event]:
        rows = self._db.execute(
            "SELECT user_id, article_id, type, ts, dwell_seconds, ranking_id FROM events"
            " WHERE user_id = ? AND ts >= ? ORDER BY ts, id",
            (user_id, since if since is not None else float("-inf")),
        ).fetchall()
        return [Event(**dict(r)) for r in rows]

    def click_counts(self, since: float) -> dict[str, int]:
        """Positive interactions per article since a time: the popularity prior for cold-start readers."""
        rows = self._db.execute(
            "SELECT article_id, COUNT(*) FROM events WHERE type IN ('click', 'like') AND ts >= ? GROUP BY article_id",
            (since,),
        ).fetchall()
        return {r[0]: r[1] for r in rows}

    def user_ids(self, since: float | None = None) -> list[str]:
        """Readers with events since a time, sorted."""
        rows = self._db.execute(
            "SELECT DISTINCT user_id FROM events WHERE ts >= ? ORDER BY user_id",
            (since if since is not None else float("-inf"),),
        ).fetchall()
        return [r[0] for r in rows]

    def known_users(self) -> list[str]:
        """Every reader newsrank holds anything on: events, preferences or rankings, sorted."""
        rows = self._db.execute(
            "SELECT user_id FROM events UNION SELECT user_id FROM users UNION SELECT user_id FROM rankings ORDER BY 1"
        ).fetchall()
        return [r[0] for r in rows]

    def count_events(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0]

    def known_user(self, user_id: str) -> bool:
        return bool(
            self._db.execute(
                "SELECT 1 FROM users WHERE user_id = ? UNION ALL SELECT 1 FROM events WHERE user_id = ?"
                " UNION ALL SELECT 1 FROM rankings WHERE user_id = ? LIMIT 1",
                (user_id, user_id, user_id),
            ).fetchone()
        )

    # -- explicit preferences -----------------------------------------------------------------------------
    def preferences(self, user_id: str) -> Preferences:
        row = self._db.execute("SELECT interests, mutes FROM users WHERE user_id = ?", (user_id,)).fetchone()
        if row is None:
            return Preferences()
        return Preferences(tuple(json.loads(row["interests"])), tuple(json.loads(row["mutes"])))

    def set_preferences(self, user_id: str, prefs: Preferences, now: float) -> None:
        self._write(
            "INSERT INTO users(user_id, interests, mutes, updated_at) VALUES (?,?,?,?) ON CONFLICT(user_id)"
            " DO UPDATE SET interests=excluded.interests, mutes=excluded.mutes, updated_at=excluded.updated_at",
            [(user_id, json.dumps(list(prefs.interests)), json.dumps(list(prefs.mutes)), now)],
        )

    # -- ranking records ----------------------------------------------------------------------------------
    def record_ranking(self, record: RankingRecord) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT INTO rankings VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        record.ranking_id,
                        record.user_id,
                        record.created_at,
                        record.strategy,
                        record.prompt_version,
                        record.backend,
                        record.model,
                        record.adapter,
                        json.dumps(record.weights),
                        record.profile_text,
                        int(record.cold_start),
                    ),
                )
                self._db.executemany(
                    f"INSERT INTO ranking_items({','.join(ITEM_COLUMNS)}) VALUES ({','.join('?' * len(ITEM_COLUMNS))})",
                    [_item_row(record.ranking_id, i) for i in record.items],
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def ranking(self, ranking_id: str) -> RankingRecord:
        row = self._db.execute("SELECT * FROM rankings WHERE ranking_id = ?", (ranking_id,)).fetchone()
        if row is None:
            raise NotFound(f"no ranking {ranking_id!r}")
        items = self._db.execute(
            "SELECT * FROM ranking_items WHERE ranking_id = ? ORDER BY position", (ranking_id,)
        ).fetchall()
        head = dict(row)
        head["weights"] = json.loads(head["weights"])
        head["cold_start"] = bool(head["cold_start"])
        return RankingRecord(**head, items=tuple(_item(r) for r in items))

    def latest_ranking_with(self, user_id: str, article_id: str) -> RankingRecord:
        row = self._db.execute(
            "SELECT r.ranking_id FROM rankings r JOIN ranking_items i USING (ranking_id)"
            " WHERE r.user_id = ? AND i.article_id = ? ORDER BY r.created_at DESC LIMIT 1",
            (user_id, article_id),
        ).fetchone()
        if row is None:
            raise NotFound(f"article {article_id!r} was never recommended to user {user_id!r}")
        return self.ranking(row[0])

    def rankings_for(self, user_id: str) -> list[RankingRecord]:
        rows = self._db.execute(
            "SELECT ranking_id FROM rankings WHERE user_id = ? ORDER BY created_at", (user_id,)
        ).fetchall()
        return [self.ranking(r[0]) for r in rows]

    # -- a reader's data as a whole -----------------------------------------------------------------------
    def export_user(self, user_id: str) -> dict:
        """Everything held on one reader: preferences, events and the rankings made for them."""
        return {
            "user_id": user_id,
            "preferences": asdict(self.preferences(user_id)),
            "events": [asdict(e) for e in self.events(user_id)],
            "rankings": [asdict(r) for r in self.rankings_for(user_id)],
        }

    def delete_user(self, user_id: str) -> dict[str, int]:
        """Erase a reader in one transaction: events, preferences, rankings (their items cascade)."""
        counts = {}
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for table in ("events", "users", "rankings"):
                    counts[table] = self._db.execute(f"DELETE FROM {table} WHERE user_id = ?", (user_id,)).rowcount
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return counts

    # -- background jobs ----------------------------------------------------------------------------------
    def add_job(self, job: Job) -> None:
        self._write("INSERT INTO jobs VALUES (?,?,?,?,?,?,?,?,?)", [_job_row(job)])

    def update_job(self, job: Job) -> None:
        self._write(
            "UPDATE jobs SET status = ?, finished_at = ?, exit_code = ? WHERE job_id = ?",
            [(job.status, job.finished_at, job.exit_code, job.job_id)],
        )

    def job(self, job_id: str) -> Job:
        row = self._db.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"no job {job_id!r}")
        return _job(row)

    def jobs(self, status: str | None = None) -> list[Job]:
        rows = self._db.execute(
            "SELECT * FROM jobs WHERE ? IS NULL OR status = ? ORDER BY created_at DESC", (status, status)
        ).fetchall()
        return [_job(r) for r in rows]


def _job_row(job: Job) -> tuple:
    values = asdict(job)
    values["args"] = json.dumps(job.args)
    return tuple(values.values())


def _job(row: sqlite3.Row) -> Job:
    data = dict(row)
    data["args"] = json.loads(data["args"])
    return Job(**data)


def _item(row: sqlite3.Row) -> RankedItem:
    data = dict(row)
    data.pop("ranking_id")
    data["grounded_in"] = tuple(json.loads(data["grounded_in"]))
    return RankedItem(**data)
