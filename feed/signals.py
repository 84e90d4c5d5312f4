"""The signals of a reader's candidates (core.records.SIGNALS), computed one way: the feed and the offline
replay both call `candidate_signals`, so what `newsrank eval` measures is what `/v1/feed` serves."""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from core.records import Article, Hit, Signals
from feed.blend import cosine_similarity, freshness
from feed.profile import Profile

if TYPE_CHECKING:
    from llm.tower import Tower


def popularity(counts: Mapping[str, int], hits: Sequence[Hit]) -> list[float]:
    """Recent clicks and likes, log-scaled to [0, 1] among these candidates (the most clicked = 1, never
    clicked = 0): a share, so a fit on one platform's traffic carries to another's."""
    logs = [math.log1p(counts.get(h.article.id, 0)) for h in hits]
    top = max(logs, default=0.0)
    return [v / top if top > 0 else 0.0 for v in logs]


CTR_PRIOR_SHOWS = 10.0  # an article's click-through rate starts at the candidates' pooled rate, as if shown this often


def click_through(clicks: Mapping[str, int], shows: Mapping[str, float], hits: Sequence[Hit]) -> list[float]:
    """Readers who clicked each candidate over readers who looked at it, smoothed toward the candidates' pooled
    rate (a new article is that rate, not 0/0), at most 1. Readers, not clicks or feeds: one reader counts once
    on each side, however often they were shown it or clicked it. `shows` may weigh each reader shown it by how
    often their place in the feed is looked at (feed.position.examined): counted whole, an article placed low
    looks worse than it is, and the feed's own order feeds back into the rate."""
    ids = [h.article.id for h in hits]
    shown = sum(shows.get(a, 0.0) for a in ids)
    clicked = sum(clicks.get(a, 0) for a in ids if shows.get(a, 0.0) > 0)
    pooled = min(1.0, clicked / shown) if shown else 0.0
    return [
        min(1.0, (clicks.get(a, 0) + CTR_PRIOR_SHOWS * pooled) / (shows.get(a, 0.0) + CTR_PRIOR_SHOWS)) for a in ids
    ]


class CoClicks:
    """Which readers engaged with each article (item → readers), for the co-click signal: how strongly readers
    who clicked what this reader clicked also clicked a candidate. Bounded: the most recent `max_pairs`
    (reader, article) engagements of a window, so memory and the time a feed spends here are bounded too."""

    def __init__(self, pairs: Iterable[tuple[str, str]] = (), max_pairs: int = 200_000) -> None:
        readers: dict[str, set[str]] = {}
        for n, (reader, article) in enumerate(pairs):
            if n >= max_pairs:
                break
            readers.setdefault(article, set()).add(reader)
        self.readers = readers

    def scores(self, history: Sequence[str], hits: Sequence[Hit], reader: str | None = None) -> list[float]:
        """Each candidate's mean item-item cosine to the reader's recent clicks: |R(h) ∩ R(x)| / sqrt(|R(h)|
        |R(x)|), R the readers who engaged with an article, the reader themselves left out (their own clicks
        would make every article they clicked look co-clicked with itself). In [0, 1], whatever the traffic."""
        if not history:
            return [0.0] * len(hits)
        own = {reader} if reader is not None else set()
        seen = [self.readers.get(h, set()) - own for h in history]
        out = []
        for hit in hits:
            others = self.readers.get(hit.article.id, set()) - own
            if not others:
                out.append(0.0)
                continue
            total = sum(len(r & others) / math.sqrt(len(r) * len(others)) for r in seen if r)
            out.append(total / len(history))
        return out


FOLLOWED_HALF_LIFE_HOURS = 12.0


def followed(article: Article, follows: Collection[str], now: float | None) -> float:
    """The boost of an article of a story the reader follows: 1 when brand new, half after 12 hours; else 0."""
    if not follows or (article.story or article.id) not in follows:
        return 0.0
    return 1.0 if now is None else freshness((now - article.published_at) / 3600, FOLLOWED_HALF_LIFE_HOURS)


def tower_match(tower: Tower | None, profile: Profile, hits: Sequence[Hit]) -> list[float] | None:
    """The LLM's match of each candidate to the reader (llm/tower.py); None without a tower."""
    if tower is None:
        return None
    return tower.match([h.reading for h in profile.history], [h.reading for h in hits])


def similarity(profile: Profile, hit: Hit) -> float:
    """The cosine of a candidate to the reader's profile vector: the retrieval's own where it found the
    candidate by similarity, computed here for the others (fresh and popular picks), in [0, 1]."""
    if hit.similarity is not None:
        value = hit.similarity
    elif profile.query is None:
        value = 0.0
    else:
        value = float(cosine_similarity(hit.embedding[None, :], profile.query[None, :])[0, 0])
    return float(np.clip(value, 0.0, 1.0))


def candidate_signals(
    profile: Profile,
    hits: Sequence[Hit],
    relevance: Sequence[float | None],
    popularity: Sequence[float],
    now: float | None,
    half_life_hours: float,
    ctr: Sequence[float] | None = None,
    coclick: Sequence[float] | None = None,
    follows: Collection[str] = (),
    query: Sequence[float] | None = None,
    match: Sequence[float] | None = None,
) -> list[Signals]:
    """Every fitted and hand-set signal of each candidate. `relevance`: the LLM's P(Yes), None where it has
    not scored the candidate (0 here; the blend then weighs the candidate without it). `now`: None where the
    articles carry no publication time (MIND), and every candidate counts as new. `follows`: the stories the reader
    follows, whose articles get the `followed` boost, decaying with their age. `query`: each candidate's match to
    the reader's search, in a search. `match`: the LLM's match of each (llm/tower.py; None: no tower, 0)."""
    embeddings = np.stack([h.embedding for h in hits]) if hits else np.zeros((0, 1))
    closest = profile.closest(embeddings)
    ctr = ctr if ctr is not None else [0.0] * len(hits)
    coclick = coclick if coclick is not None else [0.0] * len(hits)
    query = query if query is not None else [0.0] * len(hits)
    match = match if match is not None else [0.0] * len(hits)
    return [
        Signals(
            relevance=0.0 if y is None else float(y),
            match=m,
            freshness=1.0 if now is None else freshness((now - h.article.published_at) / 3600, half_life_hours),
            similarity=similarity(profile, h),
            affinity=profile.affinity(h.article),
            closest=float(np.clip(c, 0.0, 1.0)),
            subcategory=profile.subcategory_shares.get(h.article.subcategory, 0.0),
            popularity=p,
            ctr=rate,
            coclick=co,
            followed=followed(h.article, follows, now),
            query=float(np.clip(q, 0.0, 1.0)),
        )
        for h, y, c, p, rate, co, q, m in zip(
            hits, relevance, closest, popularity, ctr, coclick, query, match, strict=True
        )
    ]
