"""Prometheus metrics in the text exposition format, with no client library: counters and one histogram.

Request counts and latencies come from a middleware (labelled by route template, not raw path, so that user
ids never become label values); LLM tokens and cache hits are counted where the work happens.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

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
