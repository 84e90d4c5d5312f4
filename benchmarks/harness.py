"""What the service benchmarks share: the real app served on loopback, concurrent clients sending a mix of
requests, and the report (latency percentiles, answers by status, durability of every acknowledged event, the
service's log). benchmarks/load.py, failures.py, fast_feed.py and concurrent_feed.py use it; run them, not this.
"""

from __future__ import annotations

import json
import logging
import random
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any

import httpx
import uvicorn

from config.settings import Settings
from core.llm import Backend
from core.stores import FeedbackStore
from serve import demo
from serve.app import create_app
from serve.service import DEMO_USERS, Newsrank


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(service: Newsrank) -> Iterator[str]:
    """The app on a free loopback port, in a thread of this process; yields its base URL."""
    config = uvicorn.Config(create_app(newsrank=service), host="127.0.0.1", port=free_port(), log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise SystemExit("the server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(30)


ROUTES = ("feed", "events", "chat", "explain")
DEFAULT_MIX = "feed=60,events=25,chat=10,explain=5"
QUESTION = "Why was this recommended?"
EVENT_TYPES = ("impression", "click", "like", "skip", "dislike")


@dataclass
class Result:
    """One request: what it was, when it started (time.monotonic), how long it took, and how it ended: an
    HTTP status, or the name of the exception when no answer came."""

    route: str
    start: float
    seconds: float
    status: int | str
    body: str = ""  # the start of an error body, to see what clients were told
    degraded: bool = False  # a 200 that says it was made without the LLM

    @property
    def end(self) -> float:
        return self.start + self.seconds

    @property
    def ok(self) -> bool:
        return isinstance(self.status, int) and 200 <= self.status < 300

    @property
    def label(self) -> str:
        return f"{self.status} degraded" if self.degraded else str(self.status)


@dataclass
class Run:
    prefix: str  # every reader id this run's events were sent for starts with it
    started: float
    ended: float = 0.0
    results: list[Result] = field(default_factory=list)
    acknowledged: list[tuple[str, str]] = field(default_factory=list)  # (reader, article) of batches answered 201
    unanswered: list[tuple[str, str]] = field(default_factory=list)  # batches with no answer, or a 5xx
    lock: threading.Lock = field(default_factory=threading.Lock)


def new_run() -> Run:
    return Run(prefix=f"load-{uuid.uuid4().hex[:8]}-", started=time.monotonic())


def parse_mix(text: str) -> dict[str, float]:
    mix = {}
    for part in text.split(","):
        name, _, weight = part.partition("=")
        if name.strip() not in ROUTES or not weight:
            raise SystemExit(f"--mix: expected ROUTE=WEIGHT with ROUTE in {ROUTES}, got {part!r}")
        mix[name.strip()] = float(weight)
    return mix


def demo_article_ids() -> list[str]:
    rows = (files("serve") / "demo" / "articles.jsonl").read_text().splitlines()
    return [json.loads(row)["id"] for row in rows if row.strip()]


def start_service(settings: Settings, backend: Backend | None = None) -> Newsrank:
    """The service from the settings (the real stores and backend stack), the demo loaded, the model warm."""
    service = Newsrank.from_settings(settings, backend=backend)
    if service.articles.count() == 0 or not all(service.feedback.known_user(u) for u in DEMO_USERS[:3]):
        demo.seed(service.articles, service.feedback, service.clock(), show_progress=False)
    service.backend.warm()
    return service


def run_load(
    base: str,
    key: str,
    clients: int,
    seconds: float,
    mix: dict[str, float],
    seed: int = 0,
    timeout: float = 120.0,
    stop: threading.Event | None = None,
    run: Run | None = None,
    readers: Sequence[str] = DEMO_USERS,
    pause: float = 0.0,
) -> Run:
    """`clients` threads send requests drawn from `mix` until `seconds` have passed (or `stop` is set), feeds
    for `readers`, each client waiting `pause` seconds between requests. Results go into `run` as they come
    (give one to watch the load from another thread)."""
    run = run or new_run()
    run.started = time.monotonic()
    deadline = run.started + seconds
    articles = demo_article_ids()
    routes, weights = list(mix), list(mix.values())

    def client(index: int) -> None:
        rng = random.Random(seed * 1000 + index)  # each client its own repeatable sequence
        last_feed: dict[str, Any] | None = None
        sent = 0
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=timeout) as http:
            while time.monotonic() < deadline and not (stop and stop.is_set()):
                route = rng.choices(routes, weights)[0]
                if route == "chat" and not (last_feed and last_feed["items"]):
                    route = "feed"  # nothing to ask about yet
                pairs: list[tuple[str, str]] = []
                if route in ("feed", "explain"):
                    body: dict[str, Any] = {"user_id": rng.choice(readers), "k": 10, "explain": route == "explain"}
                    path = "/v1/feed"
                elif route == "events":
                    size = 1 if rng.random() < 0.5 else rng.randint(2, 20)
                    reader = f"{run.prefix}{index}-{sent}"
                    pairs = [(reader, article) for article in rng.sample(articles, size)]
                    events = [{"user_id": u, "article_id": a, "type": rng.choice(EVENT_TYPES)} for u, a in pairs]
                    body, path = {"events": events}, "/v1/events"
                else:
                    item = rng.choice(last_feed["items"])
                    body = {
                        "user_id": last_feed["user_id"],
                        "ranking_id": last_feed["ranking_id"],
                        "article_id": item["article_id"],
                        "messages": [{"role": "user", "content": QUESTION}],
                    }
                    path = "/v1/chat"
                sent += 1
                if pause:
                    time.sleep(pause)
                start = time.monotonic()
                try:
                    response = http.post(path, json=body)
                    status: int | str = response.status_code
                    text = response.text if status >= 400 else ""
                except httpx.HTTPError as exc:
                    status, text, response = type(exc).__name__, str(exc), None
                result = Result(route, start, time.monotonic() - start, status, text[:300])
                if route != "events" and status == 200:
                    answer = response.json()
                    result.degraded = bool(answer.get("degraded"))  # feeds: what was degraded; chat: a flag
                    if route != "chat":
                        last_feed = answer
                with run.lock:
                    run.results.append(result)
                    if route == "events" and status == 201:
                        run.acknowledged += pairs
                    elif route == "events" and (isinstance(status, str) or status >= 500):
                        run.unanswered += pairs

    threads = [threading.Thread(target=client, args=(i,), name=f"load-client-{i}") for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    run.ended = time.monotonic()
    return run


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN when there are no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def by_status(results: Sequence[Result]) -> str:
    counts = Counter(r.label for r in results)
    return ", ".join(f"{status}×{n}" for status, n in sorted(counts.items())) or "-"


def route_table(results: Sequence[Result], seconds: float, title: str = "route") -> str:
    """Markdown: per route, requests, answers by status, latency percentiles over all answers, requests/s."""
    lines = [
        f"| {title} | requests | by status | p50 (s) | p95 (s) | p99 (s) | requests/s |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    groups = {route: [r for r in results if r.route == route] for route in ROUTES}
    groups["all"] = list(results)
    for route, group in groups.items():
        if not group:
            continue
        times = [r.seconds for r in group]
        lines.append(
            f"| {route} | {len(group)} | {by_status(group)} | {percentile(times, 50):.2f} | {percentile(times, 95):.2f}"
            f" | {percentile(times, 99):.2f} | {len(group) / seconds:.2f} |"
        )
    return "\n".join(lines)


def stored_pairs(store: FeedbackStore, prefix: str) -> set[tuple[str, str]]:
    """(reader, article) of every event stored for a reader id that starts with `prefix`."""
    with store.transaction() as tx:  # type: ignore[attr-defined]  # the SQL stores' one transaction
        rows = tx.rows("SELECT user_id, article_id FROM events WHERE user_id LIKE ?", [prefix + "%"])
    return {(r["user_id"], r["article_id"]) for r in rows}


@dataclass
class Durability:
    acknowledged: int  # events of batches answered 201
    stored: int  # how many of those the store holds
    lost: list[tuple[str, str]]  # acknowledged and not stored: must stay empty
    failed_but_stored: int  # events of batches answered 5xx (or not at all) that the store holds anyway


def durability(store: FeedbackStore, run: Run) -> Durability:
    stored = stored_pairs(store, run.prefix)
    lost = [pair for pair in run.acknowledged if pair not in stored]
    extra = sum(1 for pair in run.unanswered if pair in stored)  # a client retrying these would store them twice
    return Durability(len(run.acknowledged), len(run.acknowledged) - len(lost), lost, extra)


class LogTally(logging.Handler):
    """The service's warnings and errors, counted by logger and message instead of printed one by one (a failing
    part can log a traceback per request); `summary()` gives each with the last line of its first traceback."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: Counter[tuple[str, str]] = Counter()
        self.first: dict[tuple[str, str], str] = {}
        self._lock_counts = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        kind = (record.name, record.getMessage()[:160])
        with self._lock_counts:
            self.counts[kind] += 1
            if kind not in self.first and record.exc_info and record.exc_info[1] is not None:
                exc = record.exc_info[1]
                self.first[kind] = f"{type(exc).__name__}: {str(exc)[:200]}"

    def summary(self) -> list[str]:
        with self._lock_counts:
            return [
                f"{n}× {name}: {message}"
                + (f" ({self.first[(name, message)]})" if (name, message) in self.first else "")
                for (name, message), n in self.counts.most_common()
            ]

    def reset(self) -> None:
        with self._lock_counts:
            self.counts.clear()
            self.first.clear()


SERVICE_LOG = LogTally()


def quiet_logs() -> None:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request
    logging.getLogger("newsrank.access").setLevel(logging.WARNING)
    logging.getLogger("sentence_transformers").setLevel(logging.WARNING)  # a line per embedder loaded
    # the service's own loggers only: the app's logging config replaces the root logger's handlers when it starts
    service = logging.getLogger("newsrank")
    service.addHandler(SERVICE_LOG)
    service.propagate = False


def error_samples(results: Sequence[Result], keep: Callable[[Result], bool] = lambda r: True) -> list[str]:
    """One example body per (route, status) among the failed requests."""
    seen: dict[tuple[str, str], str] = {}
    for r in results:
        if not r.ok and keep(r):
            seen.setdefault((r.route, str(r.status)), r.body)
    return [f"{route} {status}: {body}" for (route, status), body in sorted(seen.items())]
