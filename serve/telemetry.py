"""Prometheus metrics in the text exposition format: what `/metrics` shows.

Request counts and latencies come from a middleware (labelled by route template, not raw path, so that user
ids never become label values); LLM tokens, cache hits and batches are counted where the work happens (each
backend's `counters()`); the ranking loop's own counts come from its tally; the scorer's queue and the operator's
metrics are read from the shared store, so every instance shows the same figures for them.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from core.errors import StoreUnavailable
from core.records import SCORING_KINDS
from feed.exposure import Exposure

if TYPE_CHECKING:
    from serve.service import Newsrank

log = logging.getLogger("newsrank.metrics")

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
Labels = tuple[tuple[str, str], ...]


def label_text(labels: Labels) -> str:
    if not labels:
        return ""
    escaped = (f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"' for k, v in labels)
    return "{" + ",".join(escaped) + "}"


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, dict[Labels, float]] = defaultdict(lambda: defaultdict(float))
        # per series: the bucket counts (+Inf last), then the sum and the count
        self._histograms: dict[str, dict[Labels, list[float]]] = defaultdict(dict)
        self._help: dict[str, tuple[str, str]] = {}

    def inc(self, name: str, value: float = 1.0, help: str = "", **labels: str) -> None:
        with self._lock:
            self._help.setdefault(name, ("counter", help))
            self._counters[name][tuple(sorted(labels.items()))] += value

    def observe(self, name: str, value: float, help: str = "", **labels: str) -> None:
        with self._lock:
            self._help.setdefault(name, ("histogram", help))
            series = self._histograms[name].setdefault(tuple(sorted(labels.items())), [0.0] * (len(BUCKETS) + 3))
            series[bisect.bisect_left(BUCKETS, value)] += 1  # the index past the last bucket is +Inf
            series[-2] += value
            series[-1] += 1

    def value(self, name: str, **labels: str) -> float:
        with self._lock:
            return self._counters[name].get(tuple(sorted(labels.items())), 0.0)

    def render(self) -> str:
        lines: list[str] = []
        with self._lock:
            for name, (kind, help) in sorted(self._help.items()):
                lines += [f"# HELP {name} {help}", f"# TYPE {name} {kind}"]
                if kind == "counter":
                    for labels, value in sorted(self._counters[name].items()):
                        lines.append(f"{name}{label_text(labels)} {value:g}")
                    continue
                for labels, series in sorted(self._histograms[name].items()):
                    cumulative = 0.0
                    for bound, count in zip((*BUCKETS, float("inf")), series[:-2], strict=True):
                        cumulative += count
                        le = "+Inf" if bound == float("inf") else f"{bound:g}"
                        lines.append(f"{name}_bucket{label_text((*labels, ('le', le)))} {cumulative:g}")
                    lines.append(f"{name}_sum{label_text(labels)} {series[-2]:g}")
                    lines.append(f"{name}_count{label_text(labels)} {series[-1]:g}")
        return "".join(line + "\n" for line in lines)


access = logging.getLogger("newsrank.access")


class RequestMetrics(ASGIMiddleware):
    scopes = (ScopeType.HTTP,)

    def __init__(self, metrics: Metrics, status_of: Callable[[BaseException], int] = lambda _: 500) -> None:
        self.metrics = metrics
        self.status_of = status_of  # the status an exception raised inside becomes (the app's error table)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        started = time.perf_counter()
        status = {"code": 500}

        async def send_and_record(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await next_app(scope, receive, send_and_record)
        except BaseException as exc:  # answered further out (a 401 from the key check): count what it becomes
            status["code"] = self.status_of(exc)
            raise
        finally:
            route: Any = scope.get("path_template") or "unmatched"
            method = scope.get("method", "")
            # the access log: route templates, never the ids in paths or query strings (readers stay out of logs)
            access.info("%s %s %s %.0f ms", method, route, status["code"], 1000 * (time.perf_counter() - started))
            self.metrics.inc(
                "newsrank_http_requests_total", help="HTTP requests", route=route, method=method,
                status=str(status["code"]),
            )  # fmt: skip
            self.metrics.observe(
                "newsrank_http_request_seconds", time.perf_counter() - started, help="HTTP request latency",
                route=route, method=method,
            )  # fmt: skip


# -- /metrics ---------------------------------------------------------------------------------------------
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
    "scores_shared": "LLM relevance scores kept for a reader from readers with the very same profile, not computed",
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


def exposition(metrics: Metrics, newsrank: Newsrank) -> str:
    """Everything /metrics shows, as Prometheus text."""
    counted = newsrank.backend.counters()
    parts = [metrics.render()]
    parts += [metric(f"newsrank_llm_{n}_total", h, {"": counted.get(n, 0)}) for n, h in LLM_COUNTERS.items()]
    for n, h in BATCH_COUNTERS.items():
        kinds = [kind for kind in ("score", "generate") if f"{kind}_{n}" in counted]  # what a micro-batcher counts
        by_kind = {f'{{kind="{kind}"}}': counted[f"{kind}_{n}"] for kind in kinds}
        if by_kind:
            parts.append(metric(f"newsrank_llm_{n}_total", h, by_kind))
    tallied = newsrank.tally.snapshot()
    for name, help in TALLY_COUNTERS.items():
        series = {label_text(labels): value for (n, labels), value in sorted(tallied.items()) if n == name}
        parts.append(metric(f"newsrank_{name}_total", help, series or {"": 0}))
    parts.append(exposure_gauges(newsrank.recommender.exposure.snapshot()))
    try:
        parts.append(scoring_gauges(newsrank))
        parts.append(outcome_gauges(newsrank.recent_stats()))
        history = Counter(e["kind"] for e in newsrank.feedback.loop_events(10_000))
        steps = {label_text((("kind", k),)): n for k, n in sorted(history.items())} or {"": 0}
        parts.append(
            metric("newsrank_loop_events_total", "the learning loop's steps, by kind (the shared store)", steps)
        )
    except StoreUnavailable:  # the metrics still answer; the store's own probe says what is wrong
        log.warning("the feedback store did not answer; scoring gauges left out of /metrics")
    return "".join(parts)
