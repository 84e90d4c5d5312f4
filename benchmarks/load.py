"""Bounded loopback load on the real service: feeds, events, chat and explained feeds from concurrent clients.

    .venv/bin/python benchmarks/load.py [--clients 8] [--seconds 60] [--mix feed=60,events=25,chat=10,explain=5]
                                        [--threads N] [--seed 0] [--timeout 120]

Serves the real app as benchmarks/concurrent_feed.py does: uvicorn on 127.0.0.1 in this process, the demo
corpus and readers seeded into a temporary data dir, the real packaged LLM behind the backend stack the service
builds, the API key from the settings. Then `--clients` threads, each with its own connection, send requests
back to back for `--seconds` (requests in flight then may finish, each within `--timeout`), each request drawn
from `--mix` (relative weights):

- feed: a demo reader's feed without explanations (k = 10);
- events: a batch of 1 event (half of them) or of 2-20, each batch for a reader id of its own, on distinct demo
  articles, so every (reader, article) pair is unique and can be looked for in the store afterwards;
- chat: "Why was this recommended?" about an item of the last feed this client got;
- explain: a feed with explanations.

Prints per route: requests, answers by status, p50/p95/p99 latency over all answers, requests/s; then checks
through the feedback store that every event of every batch answered 201 is stored.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import tempfile
import time
from pathlib import Path

import httpx
from harness import (  # the shared parts of the service benchmarks (benchmarks/harness.py)
    DEFAULT_MIX,
    ROUTES,
    SERVICE_LOG,
    durability,
    error_samples,
    parse_mix,
    quiet_logs,
    route_table,
    run_load,
    serving,
    start_service,
)

from config.settings import Settings
from llm.models import offline
from serve.service import DEMO_USERS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0, help="how long new requests are sent")
    parser.add_argument("--mix", default=DEFAULT_MIX, help=f"relative weights of {', '.join(ROUTES)}")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds a client waits for one answer")
    args = parser.parse_args()
    if not (1 <= args.clients <= 64 and 0 < args.seconds <= 3600 and 0 < args.timeout <= 600):
        raise SystemExit("keep it bounded: 1-64 clients, at most an hour, a timeout of at most 600 s")
    mix = parse_mix(args.mix)
    offline()
    quiet_logs()
    key = secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            data_dir=Path(tmp),
            threads=args.threads,
            api_keys=json.dumps([{"name": "load", "key": key, "scope": "admin"}]),
        )
        started = time.monotonic()
        service = start_service(settings)
        print(f"service ready in {time.monotonic() - started:.0f} s: {settings.llm} on {settings.backend}", flush=True)
        with serving(service) as base:
            httpx.post(f"{base}/v1/feed", json={"user_id": DEMO_USERS[0]}, headers={"Authorization": f"Bearer {key}"},
                       timeout=args.timeout)  # fmt: skip  # warm up the code paths before the clock starts
            run = run_load(base, key, args.clients, args.seconds, mix, args.seed, args.timeout)
        wall = run.ended - run.started
        print(f"\n{args.clients} clients, {args.seconds:g} s of new requests ({wall:.0f} s with the last answers), "
              f"mix {args.mix}, torch threads {args.threads or 'default'}\n")  # fmt: skip
        print(route_table(run.results, wall))
        kept = durability(service.feedback, run)
        batches = sum(1 for r in run.results if r.route == "events" and r.status == 201)
        print(f"\nevents: {batches} batches answered 201 ({kept.acknowledged} events); the store holds {kept.stored} "
              f"of them; lost: {len(kept.lost)}{' ' + str(kept.lost[:5]) if kept.lost else ''}; events answered 5xx "
              f"or not at all but stored anyway: {kept.failed_but_stored}")  # fmt: skip
        for sample in error_samples(run.results):
            print(f"error sample: {sample}")
        for line in SERVICE_LOG.summary():
            print(f"service log: {line}")
        service.feedback.close()
    if kept.lost:
        sys.exit(1)


if __name__ == "__main__":
    main()
