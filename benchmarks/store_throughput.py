"""The feedback store on SQLite and on PostgreSQL, side by side: events acknowledged per second and warm feeds.

    .venv/bin/python benchmarks/store_throughput.py [--writers 8] [--events 4000] [--feeds 5]

Starts a throwaway PostgreSQL server (Debian's postgresql package) and an embedded SQLite file. Events: each of
`--writers` threads stores batches of 1 and of 100 events, first through the store alone (a batch counts once
`add_events` returned: committed), then over HTTP (the real app under uvicorn on loopback, in this process; a
batch counts once its 201 arrived, which the API sends after the commit). Feeds: the demo corpus in one embedded Chroma
store, the same reader's feed (the real packaged LLM, no explanations) made `--feeds` times on each store after
a warm-up; the store's share is the profile and record phases. Ratios compare runs in this one process.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
from concurrent_feed import serving  # the app under uvicorn in a thread (benchmarks/concurrent_feed.py)

from config.settings import Settings
from core.records import Event
from feed.recommender import FeedRequest
from llm.models import offline
from serve import demo
from serve.service import Newsrank, make_backend
from store import open_store
from store.throwaway import ThrowawayPostgres

KEY = "benchmark-admin-key"
ADMIN = {"name": "benchmark", "key": KEY, "scope": "admin"}


def concurrently(work, threads: int) -> float:
    """Run work(0) .. work(threads - 1) at once, each in a thread; the seconds until all are done."""
    running = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    start = time.perf_counter()
    for thread in running:
        thread.start()
    for thread in running:
        thread.join()
    return time.perf_counter() - start


def events_per_second(url: str, writers: int, batch: int, events: int) -> float:
    store = open_store(url, pool_size=writers)
    per_writer = max(1, events // (writers * batch))

    def write(writer: int) -> None:
        for n in range(per_writer):
            store.add_events(
                [Event(f"bench-{writer}", f"a{n}-{i}", "impression", 1_767_000_000.0 + n) for i in range(batch)]
            )

    seconds = concurrently(write, writers)
    store.close()
    return writers * per_writer * batch / seconds


def acknowledged_per_second(settings: Settings, backend, writers: int, batch: int, events: int) -> float:
    """Events per second that `POST /v1/events` acknowledged, from `writers` concurrent clients."""
    service = Newsrank.from_settings(settings, backend=backend)
    per_writer = max(1, events // (writers * batch))
    failures = []

    def write(writer: int) -> None:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as client:
            for n in range(per_writer):
                body = {"events": [{"user_id": f"http-{writer}", "article_id": f"a{n}-{i}", "type": "impression"}
                                   for i in range(batch)]}  # fmt: skip
                if client.post("/v1/events", json=body).status_code != 201:
                    failures.append(n)

    with serving(service) as base:
        seconds = concurrently(write, writers)
    service.feedback.close()
    if failures:
        raise SystemExit(f"{len(failures)} batches were not acknowledged")
    return writers * per_writer * batch / seconds


def feed_latency(settings: Settings, backend, feeds: int) -> tuple[float, float]:
    """Median seconds of a warm feed, and of its store phases (profile + record)."""
    service = Newsrank.from_settings(settings, backend=backend)
    if not service.feedback.known_user("demo-sports"):  # a new store: the demo readers (and the corpus, again)
        demo.seed(service.articles, service.feedback, service.clock(), show_progress=False)
    request = FeedRequest("demo-sports", k=10, explain=False)
    service.recommend(request)  # warm: prefix caches, connections, Chroma's index
    totals, store_parts = [], []
    for _ in range(feeds):
        timings = service.recommend(request).timings
        totals.append(timings["total"])
        store_parts.append(timings["profile"] + timings["record"])
    service.feedback.close()
    return statistics.median(totals), statistics.median(store_parts)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--events", type=int, default=4000, help="events per run (batches of 1: a tenth)")
    parser.add_argument("--feeds", type=int, default=5)
    args = parser.parse_args()
    offline()
    logging.disable(logging.INFO)  # no line per request
    server = ThrowawayPostgres()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            stores = {
                "SQLite": lambda name: f"sqlite:///{Path(tmp) / name}.sqlite3",
                "PostgreSQL": lambda _: server.new_database(),
            }
            print(f"events acknowledged per second, {args.writers} concurrent writers")
            print("| batch | SQLite | PostgreSQL | PostgreSQL / SQLite |\n|---:|---:|---:|---:|")
            for batch, events in ((1, args.events // 10), (100, args.events * 10)):
                rates = {name: events_per_second(url(f"events-{batch}"), args.writers, batch, events)
                         for name, url in stores.items()}  # fmt: skip
                print(f"| {batch} | {rates['SQLite']:,.0f} | {rates['PostgreSQL']:,.0f} | "
                      f"{rates['PostgreSQL'] / rates['SQLite']:.2f}x |")  # fmt: skip

            base = Settings(data_dir=Path(tmp) / "data", candidates=20, api_keys=json.dumps([ADMIN]))
            backend = make_backend(base)
            backend.warm()
            print(f"\nevents acknowledged per second over HTTP (POST /v1/events), {args.writers} concurrent clients")
            print("| batch | SQLite | PostgreSQL | PostgreSQL / SQLite |\n|---:|---:|---:|---:|")
            for batch, events in ((1, args.events // 10), (100, args.events * 10)):
                rates = {
                    name: acknowledged_per_second(
                        base.model_copy(update={"database_url": url(f"http-{batch}")}), backend, args.writers, batch,
                        events,
                    )
                    for name, url in stores.items()
                }  # fmt: skip
                print(f"| {batch} | {rates['SQLite']:,.0f} | {rates['PostgreSQL']:,.0f} | "
                      f"{rates['PostgreSQL'] / rates['SQLite']:.2f}x |")  # fmt: skip

            print(f"\nwarm feed, demo-sports, {base.candidates} candidates, k = 10, median of {args.feeds}")
            print("| store | feed (s) | store phases (s) |\n|---|---:|---:|")
            for name, url in stores.items():
                total, store_part = feed_latency(base.model_copy(update={"database_url": url("feeds")}), backend,
                                                 args.feeds)  # fmt: skip
                print(f"| {name} | {total:.3f} | {store_part:.4f} |")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
