"""The versioned JSON API. Every route needs an API key except the probes; admin routes carry a guard, and
routes that act for a reader check that the key may act for that reader."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Annotated, Literal
from urllib.parse import quote

from anyio import to_thread
from litestar import Controller, Request, delete, get, patch, post, put
from litestar.params import Parameter
from litestar.response import Response, ServerSentEvent

from core import __version__
from core.errors import InvalidInput, NotFound, RateLimited
from serve.auth import PUBLIC, ApiKey, admin_only
from serve.schemas import (
    PRINTABLE,
    USER_ID,
    ActivateIn,
    AdapterOut,
    ArticleOut,
    ArticlesIn,
    ChatIn,
    ChatOut,
    EventsIn,
    EventsStoredOut,
    FeedOut,
    FeedRequestIn,
    JobOut,
    PreferencesOut,
    PreferencesPatch,
    SearchIn,
    StoredOut,
    StoryOut,
    TrainIn,
    UserOut,
    WhyOut,
)
from serve.service import Newsrank
from serve.telemetry import Metrics, exposition

Req = Request[ApiKey, str, object]
# ids in paths and query strings, checked like the same ids in bodies
PathUser = Annotated[str, Parameter(min_length=1, max_length=200, pattern=USER_ID)]
PathArticle = Annotated[str, Parameter(min_length=1, max_length=200, pattern=PRINTABLE)]
PathName = Annotated[str, Parameter(max_length=64, pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
PathJob = Annotated[str, Parameter(max_length=64, pattern=r"^[0-9a-f]+$")]
IdempotencyKey = Annotated[
    str | None, Parameter(header="Idempotency-Key", min_length=1, max_length=200, pattern=PRINTABLE)
]
QueryRanking = Annotated[str | None, Parameter(max_length=64, pattern=r"^[0-9a-f]+$")]
log = logging.getLogger("newsrank.serve")


# -- probes -----------------------------------------------------------------------------------------------
@get("/healthz", sync_to_thread=False, opt={PUBLIC: True}, tags=["ops"])
def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok", "version": __version__}


def passes(check: Callable[[], bool]) -> bool:
    try:
        return check()
    except Exception:  # a store that does not answer is not ready; the probe itself must not fail
        log.exception("readiness check failed")
        return False


@get("/readyz", sync_to_thread=True, opt={PUBLIC: True}, tags=["ops"])
def readyz(newsrank: Newsrank) -> Response[dict[str, object]]:
    """Readiness: the model is loaded (the app starts serving only after), the stores answer, the feedback
    store's schema is current and there are articles to rank."""
    checks = {
        "articles": passes(lambda: newsrank.articles.count() > 0),
        "feedback": passes(newsrank.feedback.schema_current),
    }
    ready = all(checks.values())
    return Response({"ready": ready, "checks": checks}, status_code=200 if ready else 503)


@get("/v1/stats/serving", sync_to_thread=True, guards=[admin_only], tags=["ops"])
def serving(newsrank: Newsrank) -> dict:
    """What feeds are made with now, per experiment arm: adapter and ranker versions, blend weights, the model."""
    return newsrank.serving()


@get("/metrics", sync_to_thread=True, guards=[admin_only], tags=["ops"], media_type="text/plain; version=0.0.4")
def metrics_text(metrics: Metrics, newsrank: Newsrank) -> str:
    """Prometheus text: request counts and latencies by route, LLM work, prefix-cache hits, micro-batching, the
    background scorer's queue and throughput, the feed's cache hit rate, exposure and the operator's metrics."""
    return exposition(metrics, newsrank)


@get("/v1/loop", sync_to_thread=True, guards=[admin_only], tags=["ops"])
def loop(newsrank: Newsrank) -> dict:
    """The learning loop's history, the newest first: what it trained, put to an A/B test, promoted or rolled back,
    each with its evidence; and its schedule."""
    s = newsrank.settings
    schedule = ("off: set NEWSRANK_RETRAIN_EVERY_EVENTS or NEWSRANK_RETRAIN_AT" if not s.learning_loop else
                f"retrain every {s.retrain_every_events or '–'} engagement events or at {s.retrain_at or '–'} UTC; "
                f"A/B on {s.loop_treatment_share:.0%} of readers, decided at α {s.loop_alpha}")  # fmt: skip
    return {"schedule": schedule, "events": newsrank.feedback.loop_events(100)}


@get("/v1/stats", sync_to_thread=True, guards=[admin_only], tags=["ops"])
def stats(
    newsrank: Newsrank,
    since: Annotated[
        str | None, Parameter(description="ISO-8601 or epoch seconds; default: 7 days before until")
    ] = None,
    until: Annotated[str | None, Parameter(description="ISO-8601 or epoch seconds; default: now")] = None,
    by: Annotated[Literal["arm"] | None, Parameter(description="arm: a series per experiment arm")] = None,
    bucket: Literal["day", "hour"] = "day",
    wanted: Annotated[
        str | None, Parameter(query="metrics", description="comma-separated metric names; default: all")
    ] = None,
) -> dict:
    """The five metrics (relevance, diversity, freshness, interaction, satisfaction) from the feeds made in the
    window and the events that name them: per day or hour, per experiment arm with `by=arm`, each with a 95 %
    interval, and each arm's difference from the control."""
    names = [m.strip() for m in wanted.split(",") if m.strip()] if wanted else []
    return newsrank.stats(since, until, bucket, by == "arm", names)


# -- what clients use: feed, events, chat -------------------------------------------------------------------
@post("/v1/feed", status_code=200, tags=["feed"])
async def feed(data: FeedRequestIn, newsrank: Newsrank, request: Req) -> FeedOut:
    """A ranked feed for one reader with the score breakdown, explanations for the top items and a ranking_id
    that events and chat can refer to. It is made from what the LLM computed ahead, never waiting on the model;
    each item says where its relevance came from. `fresh` runs the model now (and may answer 429)."""
    key = request.user
    key.check_user(data.user_id)
    if data.adapter and newsrank.recommender.experiment() is not None and not key.admin:
        raise InvalidInput("an experiment runs: it chooses each reader's adapter, a client key may not name one")
    newsrank.feed_rate.take({data.user_id: 1}, "feeds")  # each feed is a stored record
    wanted = data.request(owner=key.id)
    await to_thread.run_sync(newsrank.count_new_readers, key.id, [data.user_id])
    if not newsrank.waits_on_llm(wanted):
        return FeedOut.of(await to_thread.run_sync(newsrank.recommend, wanted))
    async with newsrank.model_slots.slot("feed", key.id):
        return FeedOut.of(await newsrank.model_slots.run(newsrank.recommend, wanted))


@post("/v1/search", status_code=200, tags=["feed"])
async def search(data: SearchIn, newsrank: Newsrank, request: Req) -> FeedOut:
    """News on request: articles found for the reader's query (by meaning, and by its words: names and numbers
    match), ranked by the reader's own blend with the query's match in it, explained. A ranking like a feed's:
    events and chat can name it."""
    key = request.user
    key.check_user(data.user_id)
    newsrank.feed_rate.take({data.user_id: 1}, "feeds and searches")
    await to_thread.run_sync(newsrank.count_new_readers, key.id, [data.user_id])
    return FeedOut.of(await to_thread.run_sync(newsrank.recommend, data.request(owner=key.id)))


@get("/v1/stories/{story_id:str}", sync_to_thread=True, tags=["feed"])
def story(story_id: PathArticle, newsrank: Newsrank) -> StoryOut:
    """One story: the copies of one event (wire copies, rewrites, updates) found as articles arrived, oldest
    first. A feed shows one copy of a story and says how many sources carry it."""
    hits = newsrank.articles.story(story_id)
    if not hits:
        raise NotFound(f"no story {story_id!r}")
    return StoryOut(story=story_id, label=hits[0].article.title, sources=len(hits),
                    articles=[ArticleOut.of(h.article) for h in hits])  # fmt: skip


@put("/v1/users/{user_id:str}/follows/{story_id:str}", status_code=200, sync_to_thread=True, tags=["feed"])
def follow(user_id: PathUser, story_id: PathArticle, newsrank: Newsrank, request: Req) -> PreferencesOut:
    """Follow a story: its new articles enter the reader's feed, boosted while they are new, explained as a story
    the reader follows."""
    request.user.check_user(user_id)
    return PreferencesOut.of(newsrank.follow(user_id, story_id))


@delete("/v1/users/{user_id:str}/follows/{story_id:str}", status_code=200, sync_to_thread=True, tags=["feed"])
def unfollow(user_id: PathUser, story_id: PathArticle, newsrank: Newsrank, request: Req) -> PreferencesOut:
    """Stop following a story."""
    request.user.check_user(user_id)
    return PreferencesOut.of(newsrank.follow(user_id, story_id, follow=False))


@post("/v1/events", status_code=201, sync_to_thread=True, tags=["feed"])
def events(data: EventsIn, newsrank: Newsrank, request: Req, idempotency_key: IdempotencyKey = None) -> EventsStoredOut:
    """Store a batch of reader events, all or none; the answer comes only after they are durably stored.
    Send an `Idempotency-Key` header to retry safely: a batch sent again with the same key (within a day) is
    not stored twice, and the answer says `replayed`; the same key with another batch is a 409."""
    for event in data.events:
        request.user.check_user(event.user_id)
    stored = newsrank.add_events([e.model_dump(mode="json") for e in data.events], idempotency_key, request.user.id)
    return EventsStoredOut(stored=stored, replayed=idempotency_key is not None and stored == 0)


@post("/v1/chat", status_code=200, tags=["feed"])
async def chat(data: ChatIn, newsrank: Newsrank, request: Req) -> ChatOut:
    """Ask about a recommendation: "why was this recommended?", "show me less like this", "more about X".
    Answers come from the stored ranking record; the last two change the reader's explicit preferences.
    The item is `article_id`, else "#N" or title words in the question, else the top item of `ranking_id`."""
    request.user.check_user(data.user_id)
    async with newsrank.model_slots.slot("chat", request.user.id):
        reply = await newsrank.model_slots.run(
            newsrank.chat.answer, data.user_id, data.chat_messages(), data.ranking_id, data.article_id
        )
    return ChatOut.of(reply)


@post("/v1/chat/stream", status_code=200, tags=["feed"])
async def chat_stream(data: ChatIn, newsrank: Newsrank, request: Req) -> ServerSentEvent:
    """The same as /v1/chat, as server-sent events: `facts` (the answer from the record) at once, then
    `answer` (the final reply, phrased by the model when its text checks out) when the model is done."""
    key = request.user
    key.check_user(data.user_id)
    reply, generate = await to_thread.run_sync(
        newsrank.chat.prepare, data.user_id, data.chat_messages(), data.ranking_id, data.article_id
    )

    async def events() -> AsyncIterator[dict[str, str]]:
        yield {"event": "facts", "data": ChatOut.of(reply).model_dump_json()}
        # the slow part, after the facts are already with the reader; a model too busy to phrase it leaves the
        # record's answer, marked degraded (a stream cannot turn into a 429 any more)
        final = reply
        if generate is not None:
            try:
                async with newsrank.model_slots.slot("chat", key.id):
                    final = await newsrank.model_slots.run(newsrank.chat.phrase, reply, generate)
            except RateLimited:
                final = replace(reply, degraded=True)
        yield {"event": "answer", "data": ChatOut.of(final).model_dump_json()}

    return ServerSentEvent(events())


@get("/v1/why", sync_to_thread=True, tags=["feed"])
def why(
    user_id: PathUser, article_id: PathArticle, newsrank: Newsrank, request: Req, ranking_id: QueryRanking = None
) -> WhyOut:
    """The full audit of one recommendation: every signal, weight and the model behind it."""
    request.user.check_user(user_id)
    return WhyOut(user_id=user_id, article_id=article_id, answer=newsrank.why(user_id, article_id, ranking_id))


# -- admin: articles, readers, adapters, training -------------------------------------------------------------
class Articles(Controller):
    path = "/v1/articles"
    guards = (admin_only,)
    tags = ("articles",)

    @post("/", status_code=201, sync_to_thread=True)
    def upsert(self, data: ArticlesIn, newsrank: Newsrank) -> StoredOut:
        """Insert or replace articles by id (embedded on the way in); one invalid article rejects the batch."""
        return StoredOut(stored=newsrank.upsert_articles([a.model_dump(mode="json") for a in data.articles]))

    @get("/{article_id:str}", sync_to_thread=True)
    def get_article(self, article_id: PathArticle, newsrank: Newsrank) -> ArticleOut:
        hit = newsrank.articles.get([article_id]).get(article_id)
        if hit is None:
            raise NotFound(f"no article {article_id!r}")
        return ArticleOut.of(hit.article)

    @delete("/{article_id:str}", sync_to_thread=True)
    def delete_article(self, article_id: PathArticle, newsrank: Newsrank) -> None:
        if article_id not in newsrank.articles.get([article_id]):
            raise NotFound(f"no article {article_id!r}")
        newsrank.articles.delete([article_id])


class Users(Controller):
    path = "/v1/users"
    guards = (admin_only,)
    tags = ("users",)

    @get("/", sync_to_thread=True)
    def list_users(self, newsrank: Newsrank) -> list[str]:
        """Every reader newsrank holds data on."""
        return newsrank.feedback.known_users()

    @get("/{user_id:str}", sync_to_thread=True)
    def get_user(self, user_id: PathUser, newsrank: Newsrank) -> UserOut:
        """The profile built from the reader's events and explicit preferences."""
        return UserOut.of(newsrank.user(user_id), newsrank.settings.history_titles)

    @patch("/{user_id:str}", sync_to_thread=True)
    def patch_user(self, user_id: PathUser, data: PreferencesPatch, newsrank: Newsrank) -> PreferencesOut:
        """Replace explicit interests and/or mutes; fields left out stay as they are."""
        return PreferencesOut.of(newsrank.set_preferences(user_id, data.interests, data.mutes))

    @delete("/{user_id:str}", status_code=200, sync_to_thread=True)
    def delete_user(self, user_id: PathUser, newsrank: Newsrank) -> dict[str, int]:
        """Erase the reader's events, preferences, rankings and exported training rows; returns the counts."""
        return newsrank.delete_user(user_id)

    @get("/{user_id:str}/export", sync_to_thread=True)
    def export_user(self, user_id: PathUser, newsrank: Newsrank) -> Response[str]:
        """Everything held on the reader, as one JSON document."""
        body = json.dumps(newsrank.export_user(user_id), indent=1, ensure_ascii=False)
        return Response(body, media_type="application/json", headers={"Content-Disposition": attachment(user_id)})


class Adapters(Controller):
    path = "/v1/adapters"
    guards = (admin_only,)
    tags = ("adapters",)

    @get("/", sync_to_thread=True)
    def list_adapters(self, newsrank: Newsrank) -> list[AdapterOut]:
        return [AdapterOut.of(v) for v in newsrank.adapters.versions()]

    @post("/{name:str}/activate", status_code=200, sync_to_thread=True)
    def activate(self, name: PathName, data: ActivateIn, newsrank: Newsrank) -> AdapterOut:
        """Serve this version (default: the newest) for requests naming the adapter, from the next request."""
        return AdapterOut.of(newsrank.adapters.activate(name if data.version is None else f"{name}@{data.version}"))

    @post("/{name:str}/rollback", status_code=200, sync_to_thread=True)
    def rollback(self, name: PathName, newsrank: Newsrank) -> AdapterOut:
        """Serve the previously active version again."""
        return AdapterOut.of(newsrank.adapters.rollback(name))


class Jobs(Controller):
    path = "/v1/jobs"
    guards = (admin_only,)
    tags = ("adapters",)

    @post("/train", status_code=202, sync_to_thread=True)
    def train(self, data: TrainIn, newsrank: Newsrank) -> JobOut:
        """Start training an adapter on recent feedback in the background; poll GET /v1/jobs/{job_id}. A
        better adapter is published as the next version of `name` and becomes active."""
        return JobOut.of(newsrank.jobs.start(data.name, data.since, data.overrides, data.force))

    @get("/", sync_to_thread=True)
    def list_jobs(self, newsrank: Newsrank) -> list[JobOut]:
        return [JobOut.of(j) for j in newsrank.jobs.list()]

    @get("/{job_id:str}", sync_to_thread=True)
    def get_job(self, job_id: PathJob, newsrank: Newsrank) -> JobOut:
        return JobOut.of(newsrank.jobs.get(job_id))


def attachment(user_id: str) -> str:
    """A Content-Disposition for a reader's export: an ASCII file name for every client, and the exact one
    (RFC 6266/5987, percent-encoded UTF-8) for those that read it. Nothing of the id can break the header."""
    plain = re.sub(r"[^A-Za-z0-9._-]+", "_", user_id)[:80] or "reader"
    exact = quote(f"newsrank-user-{user_id}.json")
    return f"attachment; filename=\"newsrank-user-{plain}.json\"; filename*=UTF-8''{exact}"


ROUTES = [
    healthz,
    readyz,
    metrics_text,
    stats,
    serving,
    loop,
    feed,
    search,
    story,
    follow,
    unfollow,
    events,
    chat,
    chat_stream,
    why,
]
ROUTES += [Articles, Users, Adapters, Jobs]
