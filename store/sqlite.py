"""The embedded feedback store: one SQLite file under the data directory, no server to run.

WAL mode with synchronous=FULL: a write that returned has been committed durably. One connection serves the
process, behind a lock (SQLite allows one writer at a time anyway); the schema version is PRAGMA user_version.
Several processes may share the file on one machine (a training job beside the service); instances on several
machines need PostgreSQL (store/postgres.py).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from core.errors import StoreUnavailable
from store.sql import SqlFeedbackStore, Tx


class SqliteFeedbackStore(SqlFeedbackStore):
    MIGRATIONS = (
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
        # 4: jobs that any instance can watch (heartbeat, output tail); one running job of a kind, enforced by
        # the schema too; the adapter registry's state (versions, stable ids, the active pointer and its history)
        """
        ALTER TABLE jobs ADD COLUMN instance TEXT NOT NULL DEFAULT '';
        ALTER TABLE jobs ADD COLUMN heartbeat_at REAL;
        ALTER TABLE jobs ADD COLUMN log_tail TEXT NOT NULL DEFAULT '';
        CREATE UNIQUE INDEX jobs_one_running ON jobs(kind) WHERE status = 'running';
        CREATE TABLE adapters (
            name TEXT PRIMARY KEY,
            active INTEGER,
            history TEXT NOT NULL DEFAULT '[]'
        );
        CREATE TABLE adapter_versions (
            name TEXT NOT NULL REFERENCES adapters(name),
            version INTEGER NOT NULL,
            id INTEGER NOT NULL UNIQUE,
            created_at REAL NOT NULL,
            PRIMARY KEY (name, version)
        );
        """,
        # 5: a ranked item's signals in one JSON object, so that a new signal needs no new column
        """
        ALTER TABLE ranking_items ADD COLUMN signals TEXT NOT NULL DEFAULT '{}';
        UPDATE ranking_items SET signals = json_object('relevance', relevance, 'similarity', similarity,
            'affinity', affinity, 'popularity', popularity, 'freshness', freshness, 'diversity', diversity);
        ALTER TABLE ranking_items DROP COLUMN relevance;
        ALTER TABLE ranking_items DROP COLUMN similarity;
        ALTER TABLE ranking_items DROP COLUMN affinity;
        ALTER TABLE ranking_items DROP COLUMN popularity;
        ALTER TABLE ranking_items DROP COLUMN freshness;
        ALTER TABLE ranking_items DROP COLUMN diversity;
        """,
        # 6: keys of event batches already stored, so that a retried batch is not stored twice; what a ranking
        # did without the LLM when it failed
        """
        CREATE TABLE event_batches (
            batch_key TEXT PRIMARY KEY,
            stored INTEGER NOT NULL,
            created_at REAL NOT NULL
        );
        CREATE INDEX event_batches_created ON event_batches(created_at);
        ALTER TABLE rankings ADD COLUMN degraded TEXT NOT NULL DEFAULT '[]';
        """,
        # 7: LLM relevance computed ahead of requests, the background scorer's queue, where each ranked item's
        # relevance came from
        """
        CREATE TABLE relevance (
            user_id TEXT NOT NULL,
            scorer TEXT NOT NULL,
            article_id TEXT NOT NULL,
            score REAL NOT NULL,
            profile_key TEXT NOT NULL,
            scored_at REAL NOT NULL,
            PRIMARY KEY (user_id, scorer, article_id)
        );
        CREATE INDEX relevance_scored ON relevance(scored_at);
        CREATE TABLE scoring_queue (
            kind TEXT NOT NULL,
            subject TEXT NOT NULL,
            priority REAL NOT NULL,
            requests INTEGER NOT NULL,
            requested_at REAL NOT NULL,
            claimed_by TEXT,
            claimed_requests INTEGER,
            claimed_at REAL,
            PRIMARY KEY (kind, subject)
        );
        CREATE INDEX scoring_queue_priority ON scoring_queue(priority);
        CREATE INDEX rankings_created ON rankings(created_at);
        ALTER TABLE ranking_items ADD COLUMN relevance_source TEXT;
        """,
        # 8: what exposure is shared between (each item's category and source) and the cap that moved it
        """
        ALTER TABLE ranking_items ADD COLUMN category TEXT NOT NULL DEFAULT '';
        ALTER TABLE ranking_items ADD COLUMN source TEXT NOT NULL DEFAULT '';
        ALTER TABLE ranking_items ADD COLUMN moved_by TEXT;
        """,
        # 9: the reader's voice (a rating's value, a comment's text); the experiment arm a feed was made in and
        # the pair of positions it put in play to measure position bias; stats by time
        """
        ALTER TABLE events ADD COLUMN value INTEGER;
        ALTER TABLE events ADD COLUMN text TEXT;
        ALTER TABLE rankings ADD COLUMN arm TEXT;
        ALTER TABLE rankings ADD COLUMN intra_list_distance REAL;
        ALTER TABLE rankings ADD COLUMN explored_pair INTEGER;
        CREATE INDEX events_ranking ON events(ranking_id);
        """,
    )

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        self.url = f"sqlite:///{self.path}"
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, timeout=10, check_same_thread=False, isolation_level=None)
        self._db.row_factory = lambda cursor, row: {d[0]: v for d, v in zip(cursor.description, row, strict=True)}
        for attempt in range(50):
            try:
                # switching to WAL can answer "locked" at once, without waiting, while another process opens
                # the same new file: try again shortly
                self._db.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == 49:
                    raise
                time.sleep(0.1)
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA secure_delete=ON")  # deleted rows are overwritten, not just unlinked
        self.migrate()

    @contextmanager
    def transaction(self, lock: str | None = None) -> Iterator[Tx]:
        # every transaction takes the write lock at once (IMMEDIATE): the file's one writer at a time is the
        # lock that `lock` names, for every process on the file
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield Tx(self, self._db)
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:  # SQLite may have rolled back already (a full disk does)
                        self._db.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as exc:
                if not any(word in str(exc) for word in ("full", "disk I/O", "locked", "readonly")):
                    raise
                raise StoreUnavailable(f"the database cannot write now: {exc}") from None

    def after_erasure(self) -> None:
        # the WAL still holds the erased rows' old pages: copy it into the (overwritten) file and empty it
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _read_version(self, tx: Tx) -> int:
        return tx.execute("PRAGMA user_version").fetchone()["user_version"]

    def _write_version(self, tx: Tx, version: int) -> None:
        tx.execute(f"PRAGMA user_version = {int(version)}")

    def encode_time(self, epoch: float) -> float:
        return float(epoch)

    def decode_time(self, value: float) -> float:
        return float(value)

    def close(self) -> None:
        self._db.close()
