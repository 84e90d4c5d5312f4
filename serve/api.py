"""The versioned JSON API. Every route needs an API key except the probes; admin routes carry a guard, and
routes that act for a reader check that the key may act for that reader."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import replace
from typing import Annotated, Literal
from urllib.parse import quote

from litestar import Controller, Request, delete, get, patch, post
from litestar.params import Parameter
from litestar.response import Response, ServerSentEvent

from core import __version__
from core.errors import NotFound, RateLimited, StoreUnavailable
from core.records import SCORING_KINDS
from feed.exposure import Exposure
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
    StoredOut,
    TrainIn,
    UserOut,
    WhyOut,
)
from serve.service import Newsrank
from serve.telemetry import Metrics, label_text

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


LLM_COUNTERS = {
    "candidates_scored": "candidates the LLM scored",
    "prefix_cache_hits": "candidates scored on an already computed profile prefix",
    "prompt_tokens": "prompt tokens the LLM read",
    "completion_tokens": "tokens the LLM generated",
    "generations": "texts the LLM generated",
}
BATCH_COUNTERS = {"batches": "LLM calls made", "merged_calls": "calls that rode in another call's batch"}


# what the ranking loop and the background scorer counted (core.tally), by tally name
TALLY_COUNTERS = {
    "feed_relevance": "feed candidates by where their relevance came from (source=llm: read from the cache under "
    "the reader's current profile)",
    "scores_written": "LLM relevance scores this process computed and stored",
    "scoring_tasks": "background scoring tasks this process ran, by kind and outcome",
    "scoring_dropped": "scoring tasks dropped because the queue was full (the sweep asks again)",
    "explanation_rewrites": "LLM rewrites of template explanations, kept (as specific as the template) or rejected",
    "feed_capped": "feed items placed by an exposure cap (holding back the item the blend placed first), by cap",
}
SCORES_WINDOW_SECONDS = 60


def metric(name: str, help: str, series: dict[str, float], kind: str = "counter") -> str:
    head = f"# HELP {name} {help}\n# TYPE {name} {kind}\n"
    return head + "".join(f"{name}{labels} {value:g}\n" for labels, value in series.items())


def exposure_gauges(exposure: Exposure) -> str:
    """How this process's feeds shared their top 10 (feed.exposure): per category and source against the
    candidates, the Gini coefficient of item exposure, the feeds reaching outside the reader's top categories."""

    def by_label(index: int) -> dict[str, float]:
        return {
            label_text((("kind", kind), ("label", label))): shares[index]
            for kind in ("category", "source")
            for label, shares in getattr(exposure, kind).items()
        }

    return "".join(
        [
            metric("newsrank_exposure_feeds_total", "feeds whose exposure is counted here", {"": exposure.feeds}),
            metric("newsrank_exposure_top10_share", "share of the feeds' top-10 slots, by category and by source",
                   by_label(0), "gauge"),
            metric("newsrank_exposure_candidate_share", "share among the feeds' candidates, by category and by "
                   "source", by_label(1), "gauge"),
            metric("newsrank_exposure_gini", "Gini coefficient of the top-10 slots each candidate item got",
                   {"": exposure.gini}, "gauge"),
            metric("newsrank_exposure_outside_share", "share of feeds with an item outside the reader's top 2 "
                   "categories", {"": exposure.outside}, "gauge"),
            metric("newsrank_exposure_outside_slot_share", "share of top-10 slots given to items outside the "
                   "reader's top 2 categories", {"": exposure.outside_slots}, "gauge"),
        ]
    )  # fmt: skip


def scoring_gauges(newsrank: Newsrank) -> str:
    """The background scorer as the shared store sees it, across every instance and worker."""
    now = newsrank.clock()
    queue = newsrank.feedback.scoring_queue()
    oldest = min((since for _, since in queue.values() if since is not None), default=now)
    written = newsrank.feedback.scores_written(now - SCORES_WINDOW_SECONDS)
    tally = newsrank.tally
    by_source = {source: tally.get("feed_relevance", source=source) for source in ("llm", "llm-stale", "none")}
    judged = sum(by_source.values())
    return "".join(
        [
            metric("newsrank_scoring_queue_depth", "scoring tasks waiting or running, by kind",
                   {f'{{kind="{k}"}}': queue.get(k, (0, None))[0] for k in SCORING_KINDS}, "gauge"),
            metric("newsrank_scoring_queue_oldest_seconds", "how long the oldest waiting scoring task has waited",
                   {"": max(0.0, now - oldest)}, "gauge"),
            metric("newsrank_scores_per_second", f"LLM relevance scores stored per second over the last "
                   f"{SCORES_WINDOW_SECONDS} s, by every worker", {"": written / SCORES_WINDOW_SECONDS}, "gauge"),
            metric("newsrank_feed_cache_hit_ratio", "share of feed candidates of readers with a history whose "
                   "relevance was read under their current profile, since this process started",
                   {"": by_source["llm"] / judged if judged else 0.0}, "gauge"),
        ]
    )  # fmt: skip


@get("/v1/stats/serving", sync_to_thread=True, guards=[admin_only], tags=["ops"])
def serving(newsrank: Newsrank) -> dict:
    """What feeds are made with now, per experiment arm: adapter and ranker versions, blend weights, the model."""
    return newsrank.serving()


def outcome_gauges(report: dict) -> str:
    """The five metrics over the last day's feeds, per experiment arm (evaluation.stats), with their 95 % bounds: the
    same figures on every instance, read from the shared store."""
    parts = {"value": "", "low": "_low", "high": "_high"}  # each figure, and the name of its series
    series: dict[str, dict[str, float]] = {key: {} for key in parts}
    for arm, row in report["total"].items():
        for name in report["metrics"]:
            for key in parts:
                if row[name][key] is not None:
                    series[key][label_text((("arm", arm), ("metric", name)))] = row[name][key]
    feeds = {label_text((("arm", arm),)): row["feeds"] for arm, row in report["total"].items()}
    return metric("newsrank_outcome_feeds", "feeds made in the last 24 h, by experiment arm", feeds, "gauge") + "".join(
        metric(f"newsrank_outcome{suffix}", f"the operator's metrics over the last 24 h's feeds by arm: "
               f"{key}", series[key], "gauge") for key, suffix in parts.items()
    )  # fmt: skip


@get("/metrics", sync_to_thread=True, guards=[admin_only], tags=["ops"], media_type="text/plain; version=0.0.4")
def metrics_text(metrics: Metrics, newsrank: Newsrank) -> str:
    """Prometheus text: request counts and latencies by route, LLM work, prefix-cache hits, micro-batching, the
    background scorer's queue and throughput, and the feed's cache hit rate."""
    llm = getattr(newsrank.backend, "stats", {})  # a MeteredBackend's counters
    batcher = getattr(getattr(newsrank.backend, "inner", None), "stats", None)  # a MicroBatcher's
    parts = [metrics.render()]
    parts += [metric(f"newsrank_llm_{n}_total", h, {"": llm.get(n, 0)}) for n, h in LLM_COUNTERS.items()]
    for n, h in BATCH_COUNTERS.items() if batcher is not None else ():
        by_kind = {f'{{kind="{kind}"}}': batcher[f"{kind}_{n}"] for kind in ("score", "generate")}
        parts.append(metric(f"newsrank_llm_{n}_total", h, by_kind))
    counted = newsrank.tally.snapshot()
    for name, help in TALLY_COUNTERS.items():
        series = {label_text(labels): value for (n, labels), value in sorted(counted.items()) if n == name}
        parts.append(metric(f"newsrank_{name}_total", help, series or {"": 0}))
    parts.append(exposure_gauges(newsrank.recommender.exposure.snapshot()))
    try:
        parts.append(scoring_gauges(newsrank))
        parts.append(outcome_gauges(newsrank.recent_stats()))
    except StoreUnavailable:  # the metrics still answer; the store's own probe says what is wrong
        log.warning("the feedback store did not answer; scoring gauges left out of /metrics")
    return "".join(parts)


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
@post("/v1/feed", status_code=200, sync_to_thread=True, tags=["feed"])
def feed(data: FeedRequestIn, newsrank: Newsrank, request: Req) -> FeedOut:
    """A ranked feed for one reader with the score breakdown, explanations for the top items and a ranking_id
    that events and chat can refer to. It is made from what the LLM computed ahead, never waiting on the model;
    each item says where its relevance came from. `fresh` runs the model now (and may answer 429)."""
    request.user.check_user(data.user_id)
    wanted = data.request()
    with newsrank.llm_gate.slot("feed") if newsrank.waits_on_llm(wanted) else nullcontext():
        return FeedOut.of(newsrank.recommend(wanted))


@post("/v1/events", status_code=201, sync_to_thread=True, tags=["feed"])
def events(data: EventsIn, newsrank: Newsrank, request: Req, idempotency_key: IdempotencyKey = None) -> EventsStoredOut:
    """Store a batch of reader events, all or none; the answer comes only after they are durably stored.
    Send an `Idempotency-Key` header to retry safely: a batch sent again with the same key (within a day) is
    not stored twice, and the answer says `replayed`."""
    for event in data.events:
        request.user.check_user(event.user_id)
    key = f"{request.user.name}:{idempotency_key}" if idempotency_key else None
    stored = newsrank.add_events([e.model_dump(mode="json") for e in data.events], key)
    return EventsStoredOut(stored=stored, replayed=key is not None and stored == 0)


@post("/v1/chat", status_code=200, sync_to_thread=True, tags=["feed"])
def chat(data: ChatIn, newsrank: Newsrank, request: Req) -> ChatOut:
    """Ask about a recommendation: "why was this recommended?", "show me less like this", "more about X".
    Answers come from the stored ranking record; the last two change the reader's explicit preferences.
    The item is `article_id`, else "#N" or title words in the question, else the top item of `ranking_id`."""
    request.user.check_user(data.user_id)
    with newsrank.llm_gate.slot("chat"):
        return ChatOut.of(newsrank.chat.answer(data.user_id, data.chat_messages(), data.ranking_id, data.article_id))


@post("/v1/chat/stream", status_code=200, sync_to_thread=True, tags=["feed"])
def chat_stream(data: ChatIn, newsrank: Newsrank, request: Req) -> ServerSentEvent:
    """The same as /v1/chat, as server-sent events: `facts` (the answer from the record) at once, then
    `answer` (the final reply, phrased by the model when its text checks out) when the model is done."""
    request.user.check_user(data.user_id)
    reply, generate = newsrank.chat.prepare(data.user_id, data.chat_messages(), data.ranking_id, data.article_id)

    def events() -> Iterator[dict[str, str]]:
        yield {"event": "facts", "data": ChatOut.of(reply).model_dump_json()}
        # the slow part, after the facts are already with the reader; a model too busy to phrase it leaves the
        # record's answer, marked degraded (a stream cannot turn into a 429 any more)
        final = reply
        if generate is not None:
            try:
                with newsrank.llm_gate.slot("chat"):
                    final = newsrank.chat.phrase(reply, generate)
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
        prefs = newsrank.set_preferences(user_id, data.interests, data.mutes)
        return PreferencesOut(interests=list(prefs.interests), mutes=list(prefs.mutes))

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


ROUTES = [healthz, readyz, metrics_text, stats, serving, feed, events, chat, chat_stream, why]
ROUTES += [Articles, Users, Adapters, Jobs]
