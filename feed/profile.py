"""The reader profile: what a reader's events say about them, as structure and as text.

Each event moves an article's engagement by a weight (a like more than a click, a dislike below zero),
decayed by age. Articles with positive engagement give the interests (their categories and subcategories),
the recent history and the retrieval query (the weighted mean of their embeddings).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from core.records import Article, Event, Hit, Preferences
from feed.blend import cosine_similarity, decay, weighted_mean
from feed.stance import stance
from llm import prompts

PROFILE_TEMPLATE = "profile.v1"
SECONDS_PER_DAY = 86400.0
EVENT_WEIGHTS: Mapping[str, float] = {
    "impression": 0.0,
    "click": 1.0,
    "like": 2.0,
    "dislike": -2.0,
    "skip": -0.5,
    "dwell": 0.0,  # dwell adds by duration, see event_weight
    "share": 2.0,
    "comment": 0.5,  # by what it says, see event_weight: a warm one counts as a like, an angry one as a dislike
    "rating": 0.0,  # by its value, see event_weight: 5 counts as a like, 1 as a dislike
}
TOP_CATEGORIES = 2  # a reader's "top categories": their two most engaged
DWELL_FULL_SECONDS = 60.0  # a minute of reading counts as much as one more click
SUBCATEGORY_SHARE = 0.5


@dataclass(frozen=True)
class Interest:
    label: str
    weight: float  # share of the reader's positive engagement, in (0, 1]


@dataclass(frozen=True)
class HistoryItem:
    article_id: str
    title: str
    category: str
    embedding: np.ndarray = field(compare=False, repr=False)
    reading: np.ndarray | None = field(default=None, compare=False, repr=False)  # the LLM's (llm/tower.py)


@dataclass(frozen=True, eq=False)
class Profile:
    user_id: str
    interests: tuple[Interest, ...] = ()
    history: tuple[HistoryItem, ...] = ()  # positively engaged articles, most recent first
    explicit: tuple[str, ...] = ()
    mutes: tuple[str, ...] = ()
    follows: tuple[str, ...] = ()  # stories the reader follows
    seen: frozenset[str] = frozenset()
    query: np.ndarray | None = None  # retrieval vector; None for a cold-start reader
    category_shares: Mapping[str, float] = field(default_factory=dict)
    subcategory_shares: Mapping[str, float] = field(default_factory=dict)
    engaged: int = 0  # articles with positive engagement (the history is the latest of them)

    @property
    def cold_start(self) -> bool:
        return not self.history and not self.explicit

    @property
    def labels(self) -> set[str]:
        """Everything an explanation may name as the reader's interest."""
        return {i.label for i in self.interests} | {e.lower() for e in self.explicit}

    def affinity(self, article: Article) -> float:
        """Topic affinity in [0, 1]: the mean of the reader's engagement share in the article's category and
        subcategory; 1 when the reader asked for either explicitly."""
        explicit = {e.lower() for e in self.explicit}
        if article.category in explicit or article.subcategory in explicit:
            return 1.0
        return 0.5 * (
            self.category_shares.get(article.category, 0.0) + self.subcategory_shares.get(article.subcategory, 0.0)
        )

    def most_read(self, n: int) -> list[str]:
        """The reader's `n` most engaged categories, most engaged first."""
        return [c for c, _ in sorted(self.category_shares.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]

    def top_categories(self, n: int = TOP_CATEGORIES) -> frozenset[str]:
        """The reader's `n` most engaged categories (and any asked for explicitly): what exposure outside the
        reader's usual reading is measured against."""
        return frozenset(self.most_read(n) + [e.lower() for e in self.explicit])

    def closest(self, embeddings: np.ndarray) -> np.ndarray:
        """Each row's largest cosine similarity to a single history item (0 without history)."""
        if not self.history or len(embeddings) == 0:
            return np.zeros(len(embeddings))
        return cosine_similarity(embeddings, np.stack([h.embedding for h in self.history])).max(axis=1)

    def render(self, history_titles: int = 5) -> str:
        return prompts.render(
            PROFILE_TEMPLATE,
            cold_start=self.cold_start,
            interests=[i.label for i in self.interests],
            explicit=list(self.explicit),
            mutes=list(self.mutes),
            history=[h.title for h in self.history[:history_titles]],
        )


def event_weight(event: Event) -> float:
    weight = EVENT_WEIGHTS[event.type]
    if event.type == "dwell" and event.dwell_seconds:
        weight += min(event.dwell_seconds / DWELL_FULL_SECONDS, 1.0)
    if event.type == "rating" and event.value is not None:
        weight += event.value - 3.0
    if event.type == "comment" and event.text:  # its stance, never its words: a comment is never read into a prompt
        said = stance(event.text)
        weight = 2.0 * said if said else weight
    return weight


def build_profile(
    user_id: str,
    events: Sequence[Event],
    preferences: Preferences,
    articles: Mapping[str, Hit],
    now: float,
    *,
    half_life_days: float = 14.0,
    top_interests: int = 5,
    history_size: int = 20,
    explicit_vector: np.ndarray | None = None,
) -> Profile:
    """A pure function of the events, the articles they name, and the clock.

    Events on articles the store no longer has still mark them seen but carry no content signal.
    """
    engagement: dict[str, float] = defaultdict(float)
    last_seen: dict[str, float] = {}
    for event in events:
        if not event.article_id:  # a rating of a whole feed says nothing about one article
            continue
        age_days = (now - event.ts) / SECONDS_PER_DAY
        engagement[event.article_id] += event_weight(event) * decay(age_days, half_life_days)
        last_seen[event.article_id] = max(event.ts, last_seen.get(event.article_id, event.ts))

    positive = [a for a, w in engagement.items() if w > 0 and a in articles]
    positive.sort(key=lambda a: (-last_seen[a], a))

    mutes = tuple(m.lower() for m in preferences.mutes)
    by_category: dict[str, float] = defaultdict(float)
    by_subcategory: dict[str, float] = defaultdict(float)
    for article_id, weight in engagement.items():
        if article_id in articles:
            article = articles[article_id].article
            if article.category in mutes or article.subcategory in mutes:
                continue
            by_category[article.category] += weight
            by_subcategory[article.subcategory] += weight
    category_shares = _shares(by_category)
    subcategory_shares = _shares(by_subcategory)
    labels = {**{k: SUBCATEGORY_SHARE * v for k, v in subcategory_shares.items()}, **category_shares}
    interests = tuple(Interest(label, w) for label, w in sorted(labels.items(), key=lambda kv: (-kv[1], kv[0])))[
        :top_interests
    ]

    history = tuple(
        HistoryItem(
            a, articles[a].article.title, articles[a].article.category, articles[a].embedding, articles[a].reading
        )
        for a in positive[:history_size]
    )
    vectors = [articles[a].embedding for a in positive]
    weights = [engagement[a] for a in positive]
    if explicit_vector is not None:
        # explicit interests count like one average engaged article
        vectors.append(explicit_vector)
        weights.append(float(np.mean(weights)) if weights else 1.0)
    query = weighted_mean(np.stack(vectors), weights) if vectors else None

    return Profile(
        user_id=user_id,
        interests=interests,
        history=history,
        explicit=tuple(preferences.interests),
        mutes=mutes,
        follows=tuple(preferences.follows),
        seen=frozenset(engagement),
        query=query,
        category_shares=category_shares,
        subcategory_shares=subcategory_shares,
        engaged=len(positive),
    )


def _shares(weights: Mapping[str, float]) -> dict[str, float]:
    """Each label's share of the positive engagement (labels with net negative engagement get none)."""
    kept = {label: w for label, w in weights.items() if label and w > 0}
    total = sum(kept.values())
    return {label: w / total for label, w in kept.items()}
