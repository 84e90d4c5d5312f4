"""The data newsrank works on, as frozen dataclasses: what every package passes to every other.

Articles and search hits (the article store), reader events and preferences, ranking records (every number
behind a feed), background jobs and adapter versions (the feedback store). Validation that holds everywhere
lives here; validation of one edge's input format lives at that edge.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import InvalidInput

EVENT_TYPES = ("impression", "click", "like", "dislike", "skip", "dwell", "share", "comment", "rating")
# what says a reader engaged with an article: a positive in training, a click for a learned ranker and the stats
ENGAGEMENT = frozenset({"click", "like", "share", "comment"})
RATINGS = range(1, 6)  # a rating event's value: the reader's satisfaction, 1 (poor) to 5 (great)
MAX_COMMENT = 2000  # characters
# where an item's relevance came from: the LLM under the reader's current profile, the LLM under an earlier
# profile, nowhere yet (the blend ran without it), or popularity (a reader with no history)
RELEVANCE_SOURCES = ("llm", "llm-stale", "none", "popularity")
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
    source: str = ""  # the publisher or domain (from the URL when not given): what exposure is shared between
    story: str = ""  # the story it is a copy of (retrieval/stories.py): an article's own id when it is the first

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
    reading: np.ndarray | None = field(default=None, compare=False, repr=False)  # the LLM's (llm/tower.py)


# -- readers --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Event:
    user_id: str
    article_id: str
    type: str
    ts: float  # epoch seconds, UTC
    dwell_seconds: float | None = None
    ranking_id: str | None = None
    value: int | None = None  # a rating's 1-5
    text: str | None = None  # a comment's text: the reader's words, never put in a prompt unescaped

    def __post_init__(self) -> None:
        if self.type not in EVENT_TYPES:
            raise InvalidInput(f"unknown event type {self.type!r}; expected one of {', '.join(EVENT_TYPES)}")
        if not self.user_id:
            raise InvalidInput("an event needs a user_id")
        # a rating may be of the whole feed (its ranking_id, no article); every other event is about an article
        if not self.article_id and not (self.type == "rating" and self.ranking_id):
            raise InvalidInput("an event needs an article_id (a rating of a whole feed: its ranking_id)")
        if self.dwell_seconds is not None and self.dwell_seconds < 0:
            raise InvalidInput("dwell_seconds must be >= 0")
        if (self.type == "rating") != (self.value is not None):
            raise InvalidInput("a rating needs a value (1-5), and only a rating has one")
        if self.value is not None and (isinstance(self.value, bool) or self.value not in RATINGS):
            raise InvalidInput("a rating's value must be a whole number from 1 to 5")
        if (self.type == "comment") != bool(self.text and self.text.strip()):
            raise InvalidInput("a comment needs a text, and only a comment has one")
        if self.text is not None and len(self.text) > MAX_COMMENT:
            raise InvalidInput(f"a comment has at most {MAX_COMMENT} characters")
        if self.text is not None and any(unicodedata.category(c) == "Cc" and c not in "\n\t" for c in self.text):
            raise InvalidInput("a comment's text may not hold control characters (line breaks and tabs aside)")


MAX_INTERESTS = 20  # explicit interests go into every prompt: a cap keeps the prompt (and the feed) fast
MAX_MUTES = 50
MAX_LABEL = 60  # characters of one interest or mute
MAX_FOLLOWS = 50  # stories one reader follows


def fit_label(label: object) -> bool:
    """An interest or mute that may be stored: a string of 1-MAX_LABEL characters, none of them a control one."""
    return (
        isinstance(label, str)
        and 1 <= len(label) <= MAX_LABEL
        and all(unicodedata.category(c)[0] != "C" for c in label)
    )


@dataclass(frozen=True)
class Preferences:
    interests: tuple[str, ...] = ()
    mutes: tuple[str, ...] = ()
    follows: tuple[str, ...] = ()  # stories the reader follows: their new articles enter the feed, boosted

    def __post_init__(self) -> None:
        if len(self.interests) > MAX_INTERESTS or len(self.mutes) > MAX_MUTES or len(self.follows) > MAX_FOLLOWS:
            raise InvalidInput(f"at most {MAX_INTERESTS} interests, {MAX_MUTES} mutes, {MAX_FOLLOWS} followed stories")
        bad = next((label for label in (*self.interests, *self.mutes) if not fit_label(label)), None)
        if bad is not None:  # every label goes into prompts: bounded, printable, whoever set it (API, chat, undo)
            raise InvalidInput(f"each interest or mute must be 1-{MAX_LABEL} printable characters, not {bad[:80]!r}")

    @classmethod
    def newest(cls, interests: Sequence[str], mutes: Sequence[str], follows: Sequence[str] = ()) -> Preferences:
        """Preferences from labels in the order they were given, duplicates and unfit labels dropped and, past the
        caps, the oldest ones forgotten (a reader who keeps asking for "more about X" keeps their latest wishes)."""
        fit = [label for label in interests if fit_label(label)], [label for label in mutes if fit_label(label)]
        return cls(tuple(dict.fromkeys(fit[0]))[-MAX_INTERESTS:], tuple(dict.fromkeys(fit[1]))[-MAX_MUTES:],
                   tuple(dict.fromkeys(str(s) for s in follows))[-MAX_FOLLOWS:])  # fmt: skip

    def with_interest(self, label: str) -> Preferences:
        return Preferences.newest(
            [i for i in self.interests if i != label] + [label], [m for m in self.mutes if m != label], self.follows
        )

    def with_mute(self, label: str) -> Preferences:
        return Preferences.newest(
            [i for i in self.interests if i != label], [m for m in self.mutes if m != label] + [label], self.follows
        )

    def following(self, story: str, follow: bool = True) -> Preferences:
        """These preferences with a story followed (or no longer followed)."""
        others = [s for s in self.follows if s != story]
        return Preferences.newest(self.interests, self.mutes, [*others, story] if follow else others)


# -- rankings -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SignalSpec:
    """One ranking signal, declared once: the blend, its weight setting, the ranking record, the API, the
    evaluation and the "why" text all read this declaration."""

    name: str
    weight: float  # its default blend weight (setting NEWSRANK_WEIGHTS__<NAME>)
    meaning: str  # what the number is, for the API's schema and the "why" text
    reason: str  # what a high value says about an item, in the reader's words (chat)
    short: str  # a column header of four letters (the command line)
    fitted: bool = True  # its weight can be fitted on logged clicks (`newsrank eval --fit-weights`)
    named: tuple[str, ...] = ()  # words a reader may name it by in chat ("what if it were less popular?")
    says: frozenset[str] = frozenset()  # words that state its reason: a phrased answer must use one (chat)
    boost: bool = False  # 0 for most items (a followed story, a search): weighed on top of the unit budget


# Each a candidate's own number in [0, 1]. The weights of relevance, similarity, affinity and popularity were
# fitted by logistic regression on the clicks of the tuning part of MIND-dev (`newsrank eval --part tune
# --fit-weights`, docs/BENCHMARKS.md); freshness cannot be measured there (MIND has no times) and is set by hand.
# closest and subcategory weigh nothing in the hand-set blend; a learned ranker (feed/learned_ranker.py) weighs them.
# A new signal: declare it here and as a field of Signals, and compute it in feed/signals.py (the feed and the
# offline replay both read it from there).
SIGNALS = (
    SignalSpec("relevance", 0.064, "the LLM's P(Yes) that the reader clicks it (for a reader without history: "
               "popularity)", "the model judged it relevant to your profile", "llm",
               named=("relevance", "relevant", "model", "llm"),
               says=frozenset({"relevant", "profile", "interest", "interests", "judged", "model", "match",
                               "matches"})),
    SignalSpec("match", 0.0, "the LLM's match of the article to the reader: (1 + cosine) / 2 of their "
               "representations from its hidden states, trained on clicks (llm/tower.py); 0.5 when unknown",
               "the model reads it as close to what you read", "mat", named=("match", "reading"),
               says=frozenset({"close", "read", "reading", "model", "match", "matches", "like"})),
    SignalSpec("similarity", 0.336, "cosine similarity of the article to the reader's profile",
               "it is close to what you read", "sim", named=("similarity", "similar"),
               says=frozenset({"close", "closely", "similar", "read", "reading", "like"})),
    SignalSpec("affinity", 0.2, "the reader's share of reading in the article's category and subcategory",
               "you read a lot in this topic", "top", named=("affinity", "topic"),
               says=frozenset({"topic", "topics", "follow", "following", "read", "lot", "interest", "interests"})),
    SignalSpec("closest", 0.0, "the largest cosine similarity of the article to a single article the reader read",
               "it is close to one article you read", "one", named=("closest",),
               says=frozenset({"close", "closely", "similar", "read", "one", "article"})),
    SignalSpec("subcategory", 0.0, "the reader's share of reading in the article's subcategory",
               "you read a lot in this subtopic", "sub", named=("subcategory", "subtopic"),
               says=frozenset({"subtopic", "topic", "topics", "follow", "following", "read", "lot"})),
    SignalSpec("popularity", 0.15, "readers' recent clicks, log-scaled (the most clicked = 1)",
               "many readers clicked it recently", "pop", named=("popularity", "popular"),
               says=frozenset({"popular", "readers", "clicked", "trending", "many"})),
    SignalSpec("ctr", 0.0, "readers who clicked it over readers who looked at it (a reader shown it and not known to "
               "have looked counted by how often their place is looked at), smoothed toward the other candidates' rate",
               "readers it was shown to often clicked it", "ctr",
               named=("click-through", "ctr", "clicked"),
               says=frozenset({"readers", "shown", "clicked", "often", "click"})),
    SignalSpec("coclick", 0.0, "how often readers who clicked what the reader clicked also clicked it (item-item "
               "cosine, mean over the reader's recent clicks)", "readers who read what you read also read it",
               "co", named=("co-click", "coclick", "others"),
               says=frozenset({"readers", "read", "also", "others", "like", "clicked"})),
    SignalSpec("freshness", 0.15, "0.5 ^ (age / half-life): 1 for a brand-new article", "it is fresh", "new",
               fitted=False, named=("freshness", "fresh", "new"),
               says=frozenset({"fresh", "new", "newest", "recent", "latest", "just"})),
    SignalSpec("followed", 0.5, "0.5 ^ (age / 12 h) for an article of a story the reader follows, else 0",
               "you follow this story", "fol", fitted=False, boost=True, named=("followed", "follow", "following"),
               says=frozenset({"follow", "following", "story", "followed"})),
    SignalSpec("query", 0.0, "how well it matches the reader's search: half its cosine to the query, half its "
               "keyword (BM25) score over the best candidate's; 0 outside a search", "it matches your search",
               "qry", fitted=False, boost=True, named=("search", "query"),
               says=frozenset({"search", "searched", "matches"})),
)  # fmt: skip
# not a candidate's own number: its gain at the place the blend gives it (greedy MMR), set by hand
DIVERSITY = SignalSpec("diversity", 0.1, "1 - the highest cosine similarity to the items placed above it",
                       "it adds variety to the feed", "div", fitted=False, named=("diversity", "diverse", "variety"),
                       says=frozenset({"variety", "varied", "different", "adds"}))  # fmt: skip
BLEND = (*SIGNALS, DIVERSITY)  # every term of the blended score


class BlendWeights(dict[str, float]):
    """A weight per term of the blend (core.records.BLEND), by name; those not given take their declared
    defaults."""

    def __init__(self, **weights: float) -> None:
        defaults = {spec.name: spec.weight for spec in BLEND}
        unknown = set(weights) - set(defaults)
        if unknown:
            raise ValueError(f"unknown signals {sorted(unknown)}; the blend has {', '.join(defaults)}")
        super().__init__({**defaults, **weights})


@dataclass(frozen=True)
class Signals:
    """A candidate's signals, one field per entry of SIGNALS."""

    relevance: float = 0.0
    match: float = 0.0
    similarity: float = 0.0
    affinity: float = 0.0
    closest: float = 0.0
    subcategory: float = 0.0
    popularity: float = 0.0
    ctr: float = 0.0
    coclick: float = 0.0
    freshness: float = 0.0
    followed: float = 0.0
    query: float = 0.0


@dataclass(frozen=True)
class RankedItem:
    """Every number behind one slot of a feed: it powers explanations, audits and training export.

    `signals` holds each term of the blend by name (SIGNALS and DIVERSITY); an older record may lack a signal
    declared after it was made."""

    position: int
    article_id: str
    title: str
    score: float
    signals: dict[str, float]
    age_hours: float
    explanation: str | None = None
    explanation_source: str | None = None  # "llm" or "template"
    grounded_in: tuple[str, ...] = ()
    relevance_source: str | None = None  # one of RELEVANCE_SOURCES; None in records made before they were kept
    category: str = ""
    source: str = ""
    moved_by: str | None = None  # the exposure cap that put it here (feed.blend.Caps.holding), if one did
    story: str = ""  # the story it is a copy of (retrieval/stories.py)
    copies: int = 1  # how many articles (sources) carry that story
    chosen_over: tuple[str, ...] = ()  # the story's other copies among the candidates, which this one beat
    chosen_for: str = ""  # why it was the copy shown: the term of the blend that put it ahead of the others


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
    degraded: tuple[str, ...] = ()  # parts done without the LLM because it failed (relevance, explanations)
    arm: str | None = None  # the experiment arm the reader was in (config.experiment), if one ran
    explored_pair: int | None = None  # positions k and k+1 were put in play, swapped at random (feed.position)
    intra_list_distance: float | None = None  # the mean pairwise cosine distance of the items shown
    experiment: str | None = None  # the experiment whose `arm` it was
    owner: str | None = None  # the client (API key id) the feed was made for: a fit weighs no client past a share


@dataclass(frozen=True)
class FeedOutcome:
    """What became of one feed: what it showed and what its reader did with it (events that name its ranking),
    the unit the operator's stats (evaluation/stats.py) are computed over."""

    ranking_id: str
    created_at: float
    arm: str | None
    shown: int  # items
    categories: int  # distinct categories among them
    intra_list_distance: float | None
    shown_age_hours: float  # summed over the items
    clicked: tuple[tuple[int, float], ...] = ()  # (position, age in hours) of each item clicked (once per item)
    likes: int = 0
    comments: int = 0
    shares: int = 0
    ratings: tuple[int, ...] = ()
    explored_pair: int | None = None  # the pair of places it put in play (feed.position), if it did
    user_id: str = ""  # its reader: no one reader weighs more than a share of an estimate over feeds
    experiment: str | None = None  # the experiment of its `arm`
    dislikes: int = 0
    skips: int = 0


@dataclass(frozen=True)
class CachedScore:
    """An LLM relevance computed ahead of the request: the score, the profile it was computed under (a digest
    of the profile text) and when."""

    score: float
    profile_key: str
    scored_at: float


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


# score a reader's candidates that have no score; rescore those scored under an earlier profile; rewrite the
# explanations of their latest ranking (feed/background_scorer.py). The queue hands them out in this order
SCORING_KINDS = ("reader", "refresh", "explain")


@dataclass(frozen=True)
class ScoringTask:
    """Work for the background scorer, one per kind and reader: asking again while it waits only raises its
    priority, so ten clicks in a row cause one rescoring. `requests` counts the asks, so that one made while the
    task runs is not lost: the task is run again."""

    kind: str  # one of SCORING_KINDS
    subject: str  # the reader's user id
    priority: float  # when its reader was last active (epoch seconds): the most recently active go first
    requests: int = 1
    requested_at: float = 0.0  # the first ask still waiting: the task's age
    owner: str = ""  # the client (API key id) whose requests asked for it: the queue is shared fairly between them


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
