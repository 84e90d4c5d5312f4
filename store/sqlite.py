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
from store import migrations
from store.sql import SqlFeedbackStore, Tx


class SqliteFeedbackStore(SqlFeedbackStore):
    MIGRATIONS = migrations.render({
        "id": "INTEGER PRIMARY KEY", "time": "REAL", "float": "REAL", "json": "TEXT", "bool": "INTEGER",
        "json_object": "json_object", "events_by_type": "CREATE INDEX events_type_ts ON events(type, ts)",
        "jobs_created": "",
    })  # fmt: skip

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
