"""The store seams, as protocols: what the ranking loop, chat, training export and the API need of a store.

`ArticleStore` is the vector store (retrieval/store.py: Chroma, embedded or a server). `FeedbackStore` holds
everything about readers and the service's shared state (store/: SQLite embedded, PostgreSQL for many
instances). Code outside those packages names only these protocols.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from core.records import AdapterVersion, Article, Event, Hit, Job, Preferences, RankingRecord


class Embedder(Protocol):
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """One L2-normalised vector per text."""
        ...


@runtime_checkable
class ArticleStore(Protocol):
    embedder: Embedder

    def count(self) -> int: ...

    def upsert(self, articles: Iterable[Article], progress: Any = None) -> int:
        """Insert or replace by id; returns how many were written."""
        ...

    def get(self, ids: Sequence[str]) -> dict[str, Hit]:
        """The stored articles among `ids`, keyed by id; unknown ids are absent."""
        ...

    def known(self, ids: Sequence[str]) -> set[str]:
        """Which of `ids` are stored (without reading the articles)."""
        ...

    def delete(self, ids: Sequence[str]) -> None: ...

    def search(
        self,
        *,
        text: str | None = None,
        vector: np.ndarray | None = None,
        k: int = 20,
        since: float | None = None,
        categories: Sequence[str] | None = None,
        exclude_categories: Sequence[str] | None = None,
        exclude_ids: Iterable[str] = (),
    ) -> list[Hit]:
        """Nearest articles to a text or a vector, best first."""
        ...

    def recent(
        self,
        *,
        since: float,
        k: int,
        categories: Sequence[str] | None = None,
        exclude_categories: Sequence[str] | None = None,
        exclude_ids: Iterable[str] = (),
    ) -> list[Hit]:
        """The newest articles published since a time, newest first."""
        ...


@runtime_checkable
class FeedbackStore(Protocol):
    url: str  # where it lives (a password is never part of what is shown)

    # schema
    def schema_current(self) -> bool: ...
    def close(self) -> None: ...

    # events: a call that returned has committed
    def add_events(self, events: Sequence[Event], batch_key: str | None = None, now: float = 0.0) -> int: ...
    def events(self, user_id: str, since: float | None = None) -> list[Event]: ...
    def click_counts(self, since: float) -> dict[str, int]: ...
    def user_ids(self, since: float | None = None) -> list[str]: ...
    def known_users(self) -> list[str]: ...
    def known_user(self, user_id: str) -> bool: ...
    def count_events(self) -> int: ...

    # explicit preferences
    def preferences(self, user_id: str) -> Preferences: ...
    def set_preferences(self, user_id: str, prefs: Preferences, now: float) -> None: ...

    # ranking records
    def record_ranking(self, record: RankingRecord) -> None: ...
    def ranking(self, ranking_id: str) -> RankingRecord: ...
    def ranking_owners(self, ranking_ids: Sequence[str]) -> dict[str, str]: ...
    def latest_ranking_with(self, user_id: str, article_id: str) -> RankingRecord: ...
    def rankings_for(self, user_id: str) -> list[RankingRecord]: ...

    # a reader as a whole
    def export_user(self, user_id: str) -> dict[str, Any]: ...
    def delete_user(self, user_id: str) -> dict[str, int]: ...

    # background jobs, one running job of a kind across every instance
    def claim_job(self, job: Job) -> None: ...
    def update_job(self, job: Job) -> bool: ...
    def interrupt_jobs(self, silent_since: float, now: float, instance: str | None = None) -> int: ...
    def job(self, job_id: str) -> Job: ...
    def jobs(self, status: str | None = None) -> list[Job]: ...

    # the adapter registry's state (the files live in a shared directory)
    def adapter_versions(self, name: str | None = None) -> list[AdapterVersion]: ...
    def add_adapter_version(
        self, name: str, place: Callable[[int, int], None], activate: bool, now: float, adapter_id: int | None = None
    ) -> tuple[int, int]: ...
    def activate_adapter(self, name: str, version: int | None = None) -> None: ...
    def rollback_adapter(self, name: str) -> None: ...


class AdapterResolver(Protocol):
    """What serving needs of the adapter registry: the version a reference names, per request."""

    def resolve(self, reference: str) -> AdapterVersion: ...
