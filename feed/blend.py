"""The ranking math, as pure functions: no clock, no I/O, no model.

For profile u and candidate x the final score is the weighted sum of the signals declared in
core.records.SIGNALS plus the diversity gain:

    L = w_relevance·y(u,x) + w_similarity·s(u,x) + w_affinity·a(u,x) + w_popularity·p(x) + w_freshness·f(x)
        + w_diversity·d(x)

y is the LLM's P(Yes), s the retrieval cosine similarity, a the reader's topic affinity (their share of
engagement in x's category and subcategory), p the article's recent clicks (log-scaled, the most clicked = 1),
f = 0.5^(age/half_life), and d the diversity gain of greedy MMR selection: 1 - max cosine to the items already
placed above x (1 for the first item).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from core.records import DIVERSITY, SIGNALS, Article, BlendWeights, Signals


def without(weights: BlendWeights, missing: str) -> BlendWeights:
    """The weights for a blend that lacks one signal: its weight goes to the other signals in proportion, so
    the candidates' own signals keep their total weight against diversity."""
    others = [spec.name for spec in SIGNALS if spec.name != missing]
    total = sum(weights[name] for name in others)
    scale = (total + weights[missing]) / total if total > 0 else 1.0
    return BlendWeights(**{**weights, missing: 0.0, **{name: weights[name] * scale for name in others}})


@dataclass(frozen=True)
class Placed:
    """One slot of a blended ranking: which candidate, its diversity gain there, its final score, and the cap
    that put it there (the one that held back the candidate the blend alone would have placed), if any."""

    index: int
    diversity: float
    score: float
    moved_by: str | None = None


@dataclass(frozen=True)
class Caps:
    """Bounds on what one feed exposes, applied while the blend places its items (settings `cap_per_source`,
    `cap_category_share`, `min_exploration_share`). `sources`, `categories` and `outside` (not among the
    reader's top categories) describe each candidate. A candidate with no source is never held by the source
    cap. When the caps leave no candidate for a slot, the blend's own choice fills it: a feed is never short."""

    sources: Sequence[str]
    categories: Sequence[str]
    outside: Sequence[bool]
    per_source: int | None = None
    category_share: float | None = None
    exploration_share: float = 0.0

    def holding(self, candidate: int, placed: Sequence[int], k: int) -> str | None:
        """The cap that holds a candidate back from the next slot, or None."""
        source = self.sources[candidate]
        if self.per_source is not None and source and sum(self.sources[i] == source for i in placed) >= self.per_source:
            return "source"
        if self.category_share is not None:
            most = max(1, math.floor(self.category_share * k + 1e-9))
            if sum(self.categories[i] == self.categories[candidate] for i in placed) >= most:
                return "category"
        if self.exploration_share > 0 and not self.outside[candidate]:
            wanted = math.ceil(self.exploration_share * k - 1e-9)
            if wanted - sum(self.outside[i] for i in placed) >= k - len(placed):
                return "exploration"  # the remaining slots are all needed for items outside the top categories
        return None


def caps_over(articles: Sequence[Article], usual: Collection[str], settings: Mapping[str, float]) -> Caps | None:
    """The caps the settings set (Settings.exposure_caps) over these candidates, for a reader whose top
    categories are `usual`; None when no cap is set."""
    if not settings:
        return None
    return Caps(
        [a.source for a in articles], [a.category for a in articles], [a.category not in usual for a in articles],
        **settings,
    )  # fmt: skip


def freshness(age_hours: float, half_life_hours: float) -> float:
    """Exponential decay: 1 for a brand-new article, 0.5 after one half-life. Future times count as new."""
    if half_life_hours <= 0:
        raise ValueError("half_life_hours must be positive")
    return 0.5 ** (max(age_hours, 0.0) / half_life_hours)


def decay(age: float, half_life: float) -> float:
    """Weight of an event `age` time units old (same decay as freshness, any unit)."""
    return freshness(age, half_life)


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise cosine similarity of the rows of a and b."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    an = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
    bn = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
    return an @ bn.T


def weighted_mean(vectors: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if len(w) == 0 or w.sum() <= 0:
        raise ValueError("need at least one positive weight")
    return (np.asarray(vectors, dtype=np.float64) * w[:, None]).sum(axis=0) / w.sum()


def blend_rank(
    signals: Sequence[Signals],
    embeddings: np.ndarray,
    weights: BlendWeights | Sequence[BlendWeights],
    k: int | None = None,
    caps: Caps | None = None,
    stories: Sequence[str] | None = None,
) -> list[Placed]:
    """Greedy MMR blend: place, one slot at a time, the candidate with the highest blended score.

    `weights` holds for every candidate, or there is one per candidate (a candidate that lacks a signal is
    blended on the others: `without`). Diversity is re-evaluated against what is already placed, so a
    near-duplicate of the top item sinks. Ties go to the earlier candidate, which keeps the result deterministic.
    `caps` make a candidate they hold back wait for a later slot (or stay out). `stories`: each candidate's story;
    a copy of a story already placed comes only after every other candidate (one slot per story).
    """
    n = len(signals)
    k = n if k is None else min(k, n)
    if n == 0 or k <= 0:
        return []
    each = [weights] * n if isinstance(weights, dict) else list(weights)
    if len(each) != n:
        raise ValueError("give one set of weights, or one per candidate")
    sim = cosine_similarity(embeddings, embeddings)
    base = np.array(
        [sum(w[spec.name] * getattr(s, spec.name) for spec in SIGNALS) for s, w in zip(signals, each, strict=True)]
    )
    diversity = np.array([w[DIVERSITY.name] for w in each])
    # closest[i]: highest similarity of candidate i to anything placed so far (none yet: -inf → gain 1)
    closest = np.full(n, -np.inf)
    remaining = np.ones(n, dtype=bool)
    placed: list[Placed] = []
    placed_stories: set[str] = set()
    for _ in range(k):
        gain = np.where(np.isinf(closest), 1.0, np.clip(1.0 - closest, 0.0, 1.0))
        eligible = remaining
        if stories is not None:
            fresh = remaining & np.array([s not in placed_stories for s in stories])
            eligible = fresh if fresh.any() else remaining
        total = np.where(eligible, base + diversity * gain, -np.inf)
        best, moved_by = int(np.argmax(total)), None
        if caps is not None:
            so_far = [p.index for p in placed]
            allowed = [i for i in np.flatnonzero(eligible) if caps.holding(int(i), so_far, k) is None]
            if allowed and best not in allowed:
                moved_by = caps.holding(best, so_far, k)
                best = int(max(allowed, key=lambda i: (total[i], -i)))
        placed.append(Placed(best, float(gain[best]), float(total[best]), moved_by))
        remaining[best] = False
        if stories is not None:
            placed_stories.add(stories[best])
        closest = np.maximum(closest, sim[best])
    return placed
