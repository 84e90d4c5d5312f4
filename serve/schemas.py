"""The HTTP contract: pydantic models at the edge."""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel, Field

from agent.ranking import MAX_K, Feed, FeedItem


class FeedRequestIn(BaseModel):
    user_id: str = Field(min_length=1, max_length=200)
    k: int = Field(10, ge=1, le=MAX_K)
    explain: bool = True
    categories: list[str] = Field(default_factory=list, description="only these categories, if given")
    adapter: str | None = Field(None, description="a loaded LoRA adapter; default: the configured one")


class SignalsOut(BaseModel):
    relevance: float
    diversity: float
    freshness: float
    similarity: float
    affinity: float
    popularity: float


class FeedItemOut(BaseModel):
    position: int
    article_id: str
    title: str
    abstract: str
    category: str
    subcategory: str
    url: str
    published_at: datetime
    age_hours: float
    score: float
    signals: SignalsOut
    explanation: str | None
    explanation_source: str | None
    grounded_in: list[str]

    @classmethod
    def of(cls, item: FeedItem) -> FeedItemOut:
        a, r = item.article, item.record
        return cls(
            position=r.position,
            article_id=a.id,
            title=a.title,
            abstract=a.abstract,
            category=a.category,
            subcategory=a.subcategory,
            url=a.url,
            published_at=datetime.fromtimestamp(a.published_at, UTC),
            age_hours=round(r.age_hours, 2),
            score=r.score,
            signals=SignalsOut(
                relevance=r.relevance,
                diversity=r.diversity,
                freshness=r.freshness,
                similarity=r.similarity,
                affinity=r.affinity,
                popularity=r.popularity,
            ),
            explanation=r.explanation,
            explanation_source=r.explanation_source,
            grounded_in=list(r.grounded_in),
        )


class FeedOut(BaseModel):
    ranking_id: str
    user_id: str
    cold_start: bool
    items: list[FeedItemOut]
    timings: dict[str, float]

    @classmethod
    def of(cls, feed: Feed) -> FeedOut:
        return cls(
            ranking_id=feed.ranking_id,
            user_id=feed.user_id,
            cold_start=feed.cold_start,
            items=[FeedItemOut.of(i) for i in feed.items],
            timings=feed.timings,
        )


class WhyOut(BaseModel):
    user_id: str
    article_id: str
    answer: str
