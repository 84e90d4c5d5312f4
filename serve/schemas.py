"""The HTTP contract: pydantic models at the edge."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from chat.conversation import MAX_MESSAGE_CHARS, MAX_MESSAGES, Message, Reply
from core.records import (
    BLEND,
    EVENT_TYPES,
    MAX_COMMENT,
    MAX_INTERESTS,
    MAX_MUTES,
    AdapterVersion,
    Article,
    Job,
    Preferences,
)
from feed.profile import Profile
from feed.recommender import MAX_K, Feed, FeedItem, FeedRequest

# Ids travel in URL paths, headers and logs: printable text only, and a reader id without "/" or "\\", so
# that every reader created through events can also be exported and erased by their id.
PRINTABLE = r"^[^\x00-\x1f\x7f]+$"
USER_ID = r"^[^\x00-\x1f\x7f/\\]+$"
UserId = Annotated[str, Field(min_length=1, max_length=200, pattern=USER_ID)]
ArticleId = Annotated[str, Field(min_length=1, max_length=200, pattern=PRINTABLE)]
RankingId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[0-9a-f]+$")]
Label = Annotated[str, Field(min_length=1, max_length=60, pattern=PRINTABLE)]
Finite = Annotated[float, Field(allow_inf_nan=False)]


class FiltersIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    categories: list[Label] = Field(default_factory=list, max_length=50, description="only these categories")
    exclude_categories: list[Label] = Field(default_factory=list, max_length=50, description="never these")
    max_age_hours: Finite | None = Field(None, gt=0, le=24 * 365 * 100, description="only articles at most this old")


class FeedRequestIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: UserId
    k: int = Field(10, ge=1, le=MAX_K)
    explain: bool = True
    filters: FiltersIn = Field(default_factory=FiltersIn)
    adapter: str | None = Field(
        None,
        max_length=80,
        description="NAME (its active version) or NAME@VERSION; default: configured. An adapter other than the "
        "configured one is run while the request waits (as with fresh)",
    )
    fresh: bool = Field(
        False,
        description="run the LLM while the request waits (relevance and explanations) instead of using what it "
        "computed ahead; may answer 429 when the model is busy",
    )

    def request(self, owner: str = "") -> FeedRequest:
        f = self.filters
        return FeedRequest(
            self.user_id, self.k, self.explain, tuple(f.categories), self.adapter, tuple(f.exclude_categories),
            f.max_age_hours, self.fresh, owner,
        )  # fmt: skip


# each term of the blend as core.records declares it
SignalsOut = create_model(
    "SignalsOut", **{spec.name: (float, Field(description=spec.meaning)) for spec in BLEND}
)  # fmt: skip


class FeedItemOut(BaseModel):
    position: int
    article_id: str
    title: str
    abstract: str
    category: str
    subcategory: str
    url: str
    source: str
    published_at: datetime
    age_hours: float
    score: float
    signals: SignalsOut
    explanation: str | None
    explanation_source: str | None
    grounded_in: list[str]
    relevance_source: str | None = Field(
        None,
        description="where the relevance signal came from: llm (computed under the reader's current profile), "
        "llm-stale (under an earlier profile; a rescoring is queued), none (not computed yet: the item was "
        "blended on its other signals, their weights scaled up) or popularity (a reader with no history)",
    )
    moved_by: str | None = Field(
        None,
        description="the exposure cap that put this item here, holding back the one the blend placed first: "
        "source (at most N per source), category (at most a share per category) or exploration (a minimum "
        "share from outside the reader's top categories)",
    )
    story: str = Field("", description="the story it is a copy of: GET /v1/stories/{story}; a feed shows one copy")
    copies: int = Field(1, description="how many articles (sources) carry that story")

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
            source=a.source,
            published_at=datetime.fromtimestamp(a.published_at, UTC),
            age_hours=round(r.age_hours, 2),
            score=r.score,
            signals=SignalsOut(**{spec.name: r.signals.get(spec.name, 0.0) for spec in BLEND}),
            explanation=r.explanation,
            explanation_source=r.explanation_source,
            grounded_in=list(r.grounded_in),
            relevance_source=r.relevance_source,
            moved_by=r.moved_by,
            story=r.story,
            copies=r.copies,
        )


class FeedOut(BaseModel):
    ranking_id: str
    user_id: str
    cold_start: bool
    items: list[FeedItemOut]
    timings: dict[str, float]
    adapter: str | None = Field(None, description="the adapter version that scored the feed (NAME@VERSION)")
    arm: str | None = Field(None, description="the experiment arm the reader is in (NEWSRANK_EXPERIMENT), if any")
    degraded: list[str] = Field(
        default_factory=list,
        description="parts that failed and were done without the LLM: relevance (the blend ran on the other "
        "signals), explanations (written from the template)",
    )

    @classmethod
    def of(cls, feed: Feed) -> FeedOut:
        return cls(
            ranking_id=feed.ranking_id,
            user_id=feed.user_id,
            cold_start=feed.cold_start,
            items=[FeedItemOut.of(i) for i in feed.items],
            timings=feed.timings,
            adapter=feed.adapter,
            arm=feed.arm,
            degraded=list(feed.degraded),
        )


class WhyOut(BaseModel):
    user_id: str
    article_id: str
    answer: str


class EventIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: UserId
    article_id: ArticleId | None = Field(None, description="the article; only a rating of a whole feed has none")
    type: Literal[EVENT_TYPES]  # type: ignore[valid-type]
    ts: datetime | Finite | None = Field(None, description="ISO-8601 or epoch seconds; default: now")
    dwell_seconds: Finite | None = Field(None, ge=0, le=24 * 3600)
    ranking_id: RankingId | None = Field(None, description="the feed the event happened in (one of this reader's)")
    value: int | None = Field(None, ge=1, le=5, strict=True, description="a rating's value: 1 (poor) to 5 (great)")
    text: str | None = Field(None, min_length=1, max_length=MAX_COMMENT, description="a comment's text")


class EventsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    events: list[EventIn] = Field(min_length=1, max_length=10_000)


class StoredOut(BaseModel):
    stored: int


class EventsStoredOut(StoredOut):
    replayed: bool = Field(False, description="this batch's Idempotency-Key was seen before: nothing new stored")


class ArticleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: ArticleId
    title: str = Field(min_length=1, max_length=1000)
    abstract: str = Field("", max_length=10_000)
    category: str = Field("", max_length=60)
    subcategory: str = Field("", max_length=60)
    url: str = Field("", max_length=2000)
    source: str = Field("", max_length=200, description="publisher or domain; default: the URL's host")
    published_at: datetime | Finite | None = Field(None, description="ISO-8601 or epoch seconds; default: now")


class ArticlesIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    articles: list[ArticleIn] = Field(min_length=1, max_length=10_000)


class ArticleOut(BaseModel):
    id: str
    title: str
    abstract: str
    category: str
    subcategory: str
    url: str
    source: str
    published_at: datetime

    @classmethod
    def of(cls, a: Article) -> ArticleOut:
        return cls(
            id=a.id, title=a.title, abstract=a.abstract, category=a.category, subcategory=a.subcategory, url=a.url,
            source=a.source, published_at=datetime.fromtimestamp(a.published_at, UTC),
        )  # fmt: skip


class MessageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["user", "assistant"]
    content: str = Field(min_length=1, max_length=MAX_MESSAGE_CHARS)


class ChatIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: UserId
    ranking_id: RankingId | None = None
    article_id: ArticleId | None = None
    messages: list[MessageIn] = Field(min_length=1, max_length=MAX_MESSAGES)

    def chat_messages(self) -> list[Message]:
        return [Message(m.role, m.content) for m in self.messages]


class PreferencesOut(BaseModel):
    interests: list[str]
    mutes: list[str]
    follows: list[str] = Field(default_factory=list, description="the stories the reader follows")

    @classmethod
    def of(cls, prefs: Preferences) -> PreferencesOut:
        return cls(interests=list(prefs.interests), mutes=list(prefs.mutes), follows=list(prefs.follows))


class SearchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: UserId
    query: str = Field(min_length=1, max_length=200, pattern=PRINTABLE)
    k: int = Field(10, ge=1, le=MAX_K)
    explain: bool = True

    def request(self, owner: str = "") -> FeedRequest:
        return FeedRequest(self.user_id, self.k, self.explain, owner=owner, query=self.query.strip())


class StoryOut(BaseModel):
    story: str
    label: str = Field(description="the first article's title")
    sources: int = Field(description="how many articles carry the story")
    articles: list[ArticleOut] = Field(description="oldest first")


class ChatOut(BaseModel):
    answer: str
    source: str = Field(description="llm: phrased by the model and checked against the record; record: written from it")
    intent: str = Field(
        description="why, above (a comparison of two items), why-not (a topic missing from the feed), what-if (a "
        "counterfactual computed on the record), less (a mute was added), more (an interest was added) or undo (the "
        "conversation's last preference change was reverted)"
    )
    ranking_id: str
    article_id: str
    title: str
    facts: dict[str, Any]
    preferences: PreferencesOut | None
    degraded: bool = Field(False, description="the model failed: the answer comes from the record alone")

    @classmethod
    def of(cls, reply: Reply) -> ChatOut:
        prefs = reply.preferences
        return cls(
            answer=reply.text, source=reply.source, intent=reply.intent, ranking_id=reply.ranking_id,
            article_id=reply.article_id, title=reply.title, facts=reply.facts,
            preferences=PreferencesOut.of(prefs) if prefs else None,
            degraded=reply.degraded,
        )  # fmt: skip


class InterestOut(BaseModel):
    label: str
    weight: float


class UserOut(BaseModel):
    user_id: str
    cold_start: bool
    interests: list[InterestOut]
    explicit_interests: list[str]
    mutes: list[str]
    history: list[str] = Field(description="titles the reader engaged with, most recent first")
    profile_text: str = Field(description="the profile as the LLM reads it")

    @classmethod
    def of(cls, profile: Profile, history_titles: int) -> UserOut:
        return cls(
            user_id=profile.user_id, cold_start=profile.cold_start,
            interests=[InterestOut(label=i.label, weight=round(i.weight, 4)) for i in profile.interests],
            explicit_interests=list(profile.explicit), mutes=list(profile.mutes),
            history=[h.title for h in profile.history], profile_text=profile.render(history_titles),
        )  # fmt: skip


class PreferencesPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    interests: list[Label] | None = Field(None, max_length=MAX_INTERESTS, description="replaces the interests")
    mutes: list[Label] | None = Field(
        None, max_length=MAX_MUTES, description="replaces the muted categories or subcategories"
    )


class AdapterOut(BaseModel):
    name: str
    version: int
    id: int
    active: bool
    card: dict[str, Any]

    @classmethod
    def of(cls, v: AdapterVersion) -> AdapterOut:
        return cls(name=v.name, version=v.version, id=v.id, active=v.active, card=v.card())


class ActivateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int | None = Field(None, ge=1, description="default: the newest version")


class TrainIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$", description="the adapter's name (no @VERSION)")
    since: str = Field(
        "last",
        max_length=40,
        pattern=PRINTABLE,
        description="'last' (since the active version was trained) or an ISO-8601 time",
    )
    overrides: list[Annotated[str, Field(max_length=200, pattern=PRINTABLE)]] = Field(
        default_factory=list, max_length=20, description="training settings, KEY=VALUE"
    )
    force: bool = Field(False, description="publish even if the gate finds it no better")


class JobOut(BaseModel):
    job_id: str
    kind: str
    args: list[str]
    status: str
    created_at: datetime
    finished_at: datetime | None
    exit_code: int | None
    log_tail: str = Field(description="the end of the job's output, where the result or the error is")
    instance: str = Field(description="the service process that runs the job (host:pid)")
    pid: int | None = Field(description="the job's own process on that instance's machine")
    heartbeat_at: datetime | None = Field(description="when its instance last reported on it")

    @classmethod
    def of(cls, job: Job) -> JobOut:
        def when(ts: float | None) -> datetime | None:
            return datetime.fromtimestamp(ts, UTC) if ts is not None else None

        return cls(
            job_id=job.job_id, kind=job.kind, args=job.args, status=job.status, created_at=when(job.created_at),
            finished_at=when(job.finished_at), exit_code=job.exit_code, log_tail=job.log_tail,
            instance=job.instance, pid=job.pid, heartbeat_at=when(job.heartbeat_at),
        )  # fmt: skip
