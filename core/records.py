"""The data newsrank works on, as frozen dataclasses: what every package passes to every other.

Articles and search hits (the article store), reader events and preferences, ranking records (every number
behind a feed), background jobs and adapter versions (the feedback store). Validation that holds everywhere
lives here; validation of one edge's input format lives at that edge.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import InvalidInput

EVENT_TYPES = ("impression", "click", "like", "dislike", "skip", "dwell")
JOB_STATUSES = ("running", "succeeded", "failed", "interrupted")


# -- articles -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Article:
    id: str
    title: str
    published_at: float  # epoch seconds, UTC
    abstract: str = ""
    category: str = ""
    subcategory: str = ""
    url: str = ""

    def __post_init__(self) -> None:
        if not self.id.strip():
            raise InvalidInput("an article needs an id")
        if not self.title.strip():
            raise InvalidInput(f"article {self.id!r} has no title")

    @property
    def text(self) -> str:
        """What gets embedded and what the LLM reads about a candidate."""
        return f"{self.title}. {self.abstract}".strip() if self.abstract else self.title


@dataclass(frozen=True)
class Hit:
    """An article as the article store returns it: with its embedding, and its similarity to a query if any."""

    article: Article
    embedding: np.ndarray
    similarity: float | None = None  # cosine to the query, when there was one


# -- readers --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Event:
    user_id: str
    article_id: str
    type: str
    ts: float  # epoch seconds, UTC
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


# -- rankings -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Signals:
    """The per-candidate numbers the blend reads, each in [0, 1]."""

    relevance: float
    freshness: float
    similarity: float
    affinity: float = 0.0
    popularity: float = 0.0


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


# -- background work ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    """A background job (training) and what became of it.

    `instance` is the service process that runs it and `heartbeat_at` when that process last said so: any
    instance that finds a running job without a recent heartbeat marks it interrupted. `log_tail` is the end
    of the job's output, kept in the store so that every instance can show it."""

    job_id: str
    kind: str
    args: list[str]
    status: str  # one of JOB_STATUSES
    created_at: float
    finished_at: float | None = None
    exit_code: int | None = None
    log_path: str = ""
    pid: int | None = None  # the child process while it runs, on `instance`'s machine
    instance: str = ""
    heartbeat_at: float | None = None
    log_tail: str = ""


# -- adapters -------------------------------------------------------------------------------------------------
ADAPTER_ID_FILE = "registry_id"  # in a version folder: its stable integer id, for backends that need one


@dataclass(frozen=True)
class AdapterVersion:
    name: str
    version: int
    id: int  # stable, never reused (vLLM's LoRARequest needs an integer)
    path: Path
    active: bool

    @property
    def key(self) -> str:
        """How a backend knows this exact version: name@version."""
        return f"{self.name}@{self.version}"

    def card(self) -> dict[str, Any]:
        card = self.path / "card.json"
        return json.loads(card.read_text()) if card.is_file() else {}


def registered_id(folder: Path | str) -> int | None:
    """The stable integer id of an adapter version folder, or None for a folder no registry published."""
    marker = Path(folder) / ADAPTER_ID_FILE
    return int(marker.read_text()) if marker.is_file() else None
