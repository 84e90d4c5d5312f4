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
from collections import Counter
from collections.abc import Iterable, Sequence
from difflib import SequenceMatcher
from functools import lru_cache

import numpy as np

from core.records import Article

WINDOW_DAYS = 3.0
TITLE_JACCARD = 0.6
TEXT_JACCARD = 0.5
SAME_COSINE = 0.93
GENERIC_WORDS = 4  # a title with fewer words of substance links only to the same title
NEIGHBOURS = 8  # nearest articles compared with each new one
WORD = re.compile(r"[a-z0-9]+")
NUMBER = re.compile(r"\d+(?:[.,]\d+)*")  # "8", "28th", "10/26/19" (three), "$1,800" (one)
STOPWORDS = frozenset(
    "a an the of in on at to by as is it be or and for with from into that this over after before about are was "
    "were will has have had its his her their our your you what who how why when where here there says said report "
    "update live new".split()
)


@lru_cache(maxsize=8192)  # an article is compared with many: its words are read once
def words(text: str) -> tuple[str, ...]:
    return tuple(WORD.findall(text.lower()))


@lru_cache(maxsize=8192)
def shingles(text: str, n: int = 2) -> frozenset[str]:
    """The word n-grams of a text, lower case (a text shorter than n words: its words)."""
    found = words(text)
    if len(found) < n:
        return frozenset(found)
    return frozenset(" ".join(found[i : i + n]) for i in range(len(found) - n + 1))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b) if a and b else 0.0


def substituted(a: str, b: str) -> bool:
    """Whether two titles are one template filled in twice, a series rather than copies of one story: each has a
    number the other lacks ("Week 8" and "Week 9", "10/12/2019" and "10/30/2019"), or they are the same words in
    the same order but for a few of substance replaced ("Weather in Seattle" and "Weather in Nashville"; not
    "says" for "said"). Another source's rewrite moves or adds words; a title that only adds words ("Report: ...",
    a first name) is not a series."""
    words_a, words_b = words(a), words(b)
    numbers_a, numbers_b = _numbers(a), _numbers(b)
    if numbers_a - numbers_b and numbers_b - numbers_a:
        return True
    # a few words replaced leave all but three of each side's words shared: most pairs end here, before the diff
    shared = sum((_counts(a) & _counts(b)).values())
    if shared < max(len(words_a), len(words_b)) - 3:
        return False
    changes = [op for op in SequenceMatcher(None, words_a, words_b, autojunk=False).get_opcodes() if op[0] != "equal"]
    if not changes or any(op[0] != "replace" for op in changes):
        return False
    changed = sum(max(i2 - i1, j2 - j1) for _, i1, i2, j1, j2 in changes)
    return (
        changed <= 3
        and len(words_a) - changed >= changed
        and any(_substance(words_a[i1:i2]) != _substance(words_b[j1:j2]) for _, i1, i2, j1, j2 in changes)
    )


@lru_cache(maxsize=8192)
def _numbers(title: str) -> Counter[str]:
    return Counter(NUMBER.findall(title))


@lru_cache(maxsize=8192)
def _counts(title: str) -> Counter[str]:
    return Counter(words(title))


def _substance(found: Iterable[str]) -> set[str]:
    """Words that say something, by stem ("says" and "said" are one); numbers ("8", "28th") are not among them."""
    return {w[:4] for w in found if w not in STOPWORDS and len(w) > 2 and not NUMBER.search(w)}


@lru_cache(maxsize=8192)
def _generic(title: str) -> bool:
    return len(_substance(words(title))) < GENERIC_WORDS


def copies(a: Article, b: Article, cosine: float) -> float:
    """How surely two articles are copies of one story (0: they are not), from their texts and embeddings."""
    return 0.0 if substituted(a.title, b.title) else _likeness(a, b, cosine)


def _likeness(a: Article, b: Article, cosine: float) -> float:
    """`copies` for two articles that are not of a series."""
    if abs(a.published_at - b.published_at) > WINDOW_DAYS * 86400:
        return 0.0
    title = jaccard(shingles(a.title), shingles(b.title))
    text = jaccard(shingles(a.text), shingles(b.text)) if a.abstract and b.abstract else 0.0
    if _generic(a.title) or _generic(b.title):
        # "Today's weather in Nashville", "Photos of the Day": too few words to tell a story from a column, and
        # embeddings of so little text are near-equal for any two: only the same title or the same text links them
        title, cosine = (1.0 if title == 1.0 else 0.0), 0.0
    sure = max(title if title >= TITLE_JACCARD else 0.0, text if text >= TEXT_JACCARD else 0.0)
    return max(sure, cosine if cosine >= SAME_COSINE else 0.0)


def choose(article: Article, candidates: Iterable[tuple[Article, float, str]]) -> str:
    """The story an article joins: that of its best-matching copy among `candidates` (articles with their cosine to
    it and their story), unless another candidate of that story is of a series with it (a story must not chain
    "Weather in Seattle" to "Weather in Nashville" through a rewrite of either); else its own id."""
    others = [(other, cosine, story) for other, cosine, story in candidates if other.id != article.id]
    best: dict[str, float] = {}
    for other, cosine, story in others:
        sure = _likeness(article, other, cosine)
        if sure > best.get(story, 0.0) and not substituted(article.title, other.title):
            best[story] = sure
    # the series test (a diff of titles) only where a story would be joined: most articles have no copy
    vetoed = {story for other, _, story in others if story in best and substituted(article.title, other.title)}
    allowed = {story: sure for story, sure in best.items() if story not in vetoed}
    return max(allowed, key=allowed.__getitem__) if allowed else article.story or article.id


def assign(
    new: Sequence[Article],
    vectors: np.ndarray,
    neighbours: Sequence[Sequence[tuple[Article, float]]],
) -> list[str]:
    """The story of each new article, `choose`n among its `neighbours` (stored articles with their cosines, each
    carrying its story) and the new articles before it in the batch."""
    stories: list[str] = []
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    sims = unit @ unit.T
    for i, article in enumerate(new):
        stored = ((other, cosine, other.story or other.id) for other, cosine in neighbours[i])
        earlier = np.argsort(-sims[i, :i])[:NEIGHBOURS]  # the nearest copies earlier in the batch, as in the store
        batch = ((new[j], float(sims[i, j]), stories[j]) for j in earlier)
        stories.append(choose(article, [*stored, *batch]))
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
            nearest = [j for j in np.argsort(-sims[row])[:NEIGHBOURS] if np.isfinite(sims[row, j])]
            stories.append(choose(articles[i], [(articles[j], float(sims[row, j]), stories[j]) for j in nearest]))
    return stories
