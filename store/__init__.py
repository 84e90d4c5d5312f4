"""Feedback stores: readers' events, preferences, ranking records, jobs and the adapter registry's state.

`open_store(url)` picks the implementation from the URL's scheme: `sqlite:///PATH` (embedded, the default) or
`postgresql://USER:PASSWORD@HOST:PORT/DB` (shared by many instances). A new store is one module that
implements core.stores.FeedbackStore plus one line in STORES. Imports only `core`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from core.errors import InvalidInput
from store.sql import TABLES, SqlFeedbackStore


def _sqlite(url: str, **_: Any) -> SqlFeedbackStore:
    from store.sqlite import SqliteFeedbackStore

    path = url.removeprefix("sqlite://")
    if not path.startswith("/") or path == "/":
        raise InvalidInput(f"bad SQLite URL {url!r}; expected sqlite:///RELATIVE/PATH or sqlite:////ABSOLUTE/PATH")
    return SqliteFeedbackStore(path[1:] or ":memory:")


def _postgres(url: str, pool_size: int = 10, timeout: float = 5.0, **_: Any) -> SqlFeedbackStore:
    from store.postgres import PostgresFeedbackStore

    return PostgresFeedbackStore(url, pool_size=pool_size, timeout=timeout)


STORES: dict[str, Callable[..., SqlFeedbackStore]] = {
    "sqlite": _sqlite,
    "postgresql": _postgres,
    "postgres": _postgres,
}


def open_store(url: str, **options: Any) -> SqlFeedbackStore:
    """The feedback store a URL names, migrated to the current schema."""
    scheme = url.partition("://")[0].split("+")[0]
    if "://" not in url or scheme not in STORES:
        raise InvalidInput(f"bad database URL {url!r}; expected sqlite:///PATH or postgresql://USER@HOST:PORT/DB")
    return STORES[scheme](url, **options)


def copy_store(source: SqlFeedbackStore, target: SqlFeedbackStore, progress: Any = None) -> dict[str, int]:
    """Copy every row of `source` into an empty `target` (ids kept), in one transaction on the target: it
    holds all of the source or nothing. Returns rows copied per table."""
    filled = [t for t in TABLES if target.count_rows(t)]
    if filled:
        raise InvalidInput(f"the target store is not empty ({', '.join(filled)}); copy into a new database")
    copied = {}
    with target.transaction(lock="migrations") as tx:
        for table in TABLES:
            copied[table] = 0
            for rows in source.table_rows(table):
                tx.insert(table, rows)
                copied[table] += len(rows)
                if progress is not None:
                    progress.update(len(rows))
        target.after_copy(tx)
    return copied


def redact(url: str) -> str:
    """A database URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
