"""Stories: the copies of one event (wire copies, rewrites, updates) found as articles arrive, and kept as one.

Two articles are copies of one story when they were published within `WINDOW_DAYS` of each other and either their
titles share at least `TITLE_JACCARD` of their word shingles (the same headline, lightly edited), their texts
share at least `TEXT_JACCARD`, or their embeddings are nearly the same (cosine ≥ `SAME_COSINE`: a rewrite).
Candidates are the new article's nearest neighbours by embedding (the article store's own index, so every
instance sees the same ones); the test on them is exact Jaccard over shingles (what MinHash estimates; with a
handful of neighbours to compare, estimating buys nothing). An article joins the story of its best-matching
copy; an article with none starts a story, named by its own id.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from core.records import Article

WINDOW_DAYS = 3.0
TITLE_JACCARD = 0.6
TEXT_JACCARD = 0.5
SAME_COSINE = 0.93
NEIGHBOURS = 8  # nearest articles compared with each new one
WORD = re.compile(r"[a-z0-9]+")


def shingles(text: str, n: int = 2) -> frozenset[str]:
    """The word n-grams of a text, lower case (a text shorter than n words: its words)."""
    words = WORD.findall(text.lower())
    if len(words) < n:
        return frozenset(words)
    return frozenset(" ".join(words[i : i + n]) for i in range(len(words) - n + 1))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b) if a and b else 0.0


def copies(a: Article, b: Article, cosine: float) -> float:
    """How surely two articles are copies of one story (0: they are not), from their texts and embeddings."""
    if abs(a.published_at - b.published_at) > WINDOW_DAYS * 86400:
        return 0.0
    title = jaccard(shingles(a.title), shingles(b.title))
    text = jaccard(shingles(a.text), shingles(b.text)) if a.abstract and b.abstract else 0.0
    sure = max(title if title >= TITLE_JACCARD else 0.0, text if text >= TEXT_JACCARD else 0.0)
    return max(sure, cosine if cosine >= SAME_COSINE else 0.0)


def assign(
    new: Sequence[Article],
    vectors: np.ndarray,
    neighbours: Sequence[Sequence[tuple[Article, float]]],
) -> list[str]:
    """The story of each new article: that of its best-matching copy among its `neighbours` (stored articles with
    their cosines, each carrying its story) and the new articles before it in the batch, else its own id."""
    stories: list[str] = []
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    for i, article in enumerate(new):
        best, story = 0.0, article.story or article.id
        for other, cosine in neighbours[i]:
            if other.id != article.id and (sure := copies(article, other, cosine)) > best:
                best, story = sure, other.story or other.id
        for j in range(i):  # an earlier copy in the same batch
            if (sure := copies(article, new[j], float(unit[i] @ unit[j]))) > best:
                best, story = sure, stories[j]
        stories.append(story)
    return stories


def group(articles: Sequence[Article], vectors: np.ndarray, chunk: int = 1024) -> list[str]:
    """The stories of a whole corpus at once (what ingesting it article by article would give, in this order):
    each article's nearest earlier articles found by chunks of a cosine matrix."""
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    stories: list[str] = []
    for start in range(0, len(articles), chunk):
        sims = unit[start : start + chunk] @ unit.T
        for row, i in enumerate(range(start, min(start + chunk, len(articles)))):
            sims[row, i:] = -np.inf  # only the articles before it, as at ingest
            nearest = np.argsort(-sims[row])[:NEIGHBOURS]
            best, story = 0.0, articles[i].id
            for j in nearest:
                if np.isfinite(sims[row, j]) and (sure := copies(articles[i], articles[j], float(sims[row, j]))) > best:
                    best, story = sure, stories[j]
            stories.append(story)
    return stories
