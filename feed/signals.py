"""The signals of a reader's candidates (core.records.SIGNALS), computed one way: the feed and the offline
replay both call `candidate_signals`, so what `newsrank eval` measures is what `/v1/feed` serves."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from core.records import Hit, Signals
from feed.blend import cosine_similarity, freshness
from feed.profile import Profile


def popularity(counts: Mapping[str, int], hits: Sequence[Hit]) -> list[float]:
    """Recent clicks and likes, log-scaled to [0, 1] among these candidates (the most clicked = 1, never
    clicked = 0): a share, so a fit on one platform's traffic carries to another's."""
    logs = [math.log1p(counts.get(h.article.id, 0)) for h in hits]
    top = max(logs, default=0.0)
    return [v / top if top > 0 else 0.0 for v in logs]


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
) -> list[Signals]:
    """Every fitted and hand-set signal of each candidate. `relevance`: the LLM's P(Yes), None where it has
    not scored the candidate (0 here; the blend then weighs the candidate without it). `now`: None where the
    articles carry no publication time (MIND), and every candidate counts as new."""
    embeddings = np.stack([h.embedding for h in hits]) if hits else np.zeros((0, 1))
    closest = profile.closest(embeddings)
    return [
        Signals(
            relevance=0.0 if y is None else float(y),
            freshness=1.0 if now is None else freshness((now - h.article.published_at) / 3600, half_life_hours),
            similarity=similarity(profile, h),
            affinity=profile.affinity(h.article),
            closest=float(np.clip(c, 0.0, 1.0)),
            subcategory=profile.subcategory_shares.get(h.article.subcategory, 0.0),
            popularity=p,
        )
        for h, y, c, p in zip(hits, relevance, closest, popularity, strict=True)
    ]
