"""Concurrent feed throughput over HTTP: the plain backend against the same backend behind the MicroBatcher.

    .venv/bin/python benchmarks/concurrent_feed.py [--clients 4] [--requests 4] [--rounds 2] [--threads N]

Seeds the demo corpus into a temporary data dir and loads the LLM once. First the mechanism alone: the LLM
calls of one explained feed per demo reader, replayed one by one and then merged into one call. Then over HTTP:
for each mode (plain, micro-batched) it serves the real Litestar app with uvicorn on loopback (same process,
same stores, same loaded model; only the backend object differs), warms it up, then runs a bounded load:
`--clients` concurrent clients, each sending `--requests` feed requests (k = 10) one after another, round robin
over the four demo readers, first without and then with explanations; `--rounds` times per mode, the modes'
order alternating. Prints requests/s and p50/p95 latency per mode (over all rounds) and the throughput ratio.
"""

from __future__ import annotations

import argparse
import json
import logging
import secrets
import statistics
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from harness import serving  # the app under uvicorn in a thread (benchmarks/harness.py)

from config.settings import Settings
from core.llm import Backend, GenerateRequest, Generation, ScoreRequest
from feed.recommender import FeedRequest
from llm.backends.batching import MicroBatcher
from llm.backends.transformers import TransformersBackend
from llm.models import offline
from serve import demo
from serve.service import DEMO_USERS, Newsrank


class Recording:
    """Passes the LLM calls through and keeps each call's requests: the real feed's calls, to replay."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.calls: list[tuple[str, list[Any]]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def score(self, requests: Sequence[ScoreRequest]) -> list[float]:
        self.calls.append(("score", list(requests)))
        return self.inner.score(requests)

    def generate(self, requests: Sequence[GenerateRequest]) -> list[Generation]:
        self.calls.append(("generate", list(requests)))
        return self.inner.generate(requests)


def calls_alone(service: Newsrank, backend: Backend, repeats: int) -> None:
    """The mechanism without HTTP: one explained feed per demo reader, their LLM calls replayed one after
    another against the same calls merged into one (what the MicroBatcher does when they meet); medians."""
    recording = Recording(backend)
    recorder = Newsrank(service.settings, service.articles, service.feedback, recording, adapters=service.adapters)
    for user in DEMO_USERS:
        recorder.recommend(FeedRequest(user, 10, explain=True))
    print("| LLM call | calls | requests | one by one (s) | merged (s) | one by one / merged |")
    print("|---|---:|---:|---:|---:|---:|")
    for kind in ("score", "generate"):
        calls = [requests for k, requests in recording.calls if k == kind]
        run = getattr(backend, kind)
        merged_call = [r for requests in calls for r in requests]
        run(merged_call)  # warm up the merged shapes too
        alone, merged = [], []
        for _ in range(repeats):  # interleaved, so that drift in the machine's load hits both alike
            start = time.perf_counter()
            for requests in calls:
                run(requests)
            alone.append(time.perf_counter() - start)
            start = time.perf_counter()
            run(merged_call)
            merged.append(time.perf_counter() - start)
        a, m = statistics.median(alone), statistics.median(merged)
        print(f"| {kind} | {len(calls)} | {len(merged_call)} | {a:.2f} | {m:.2f} | {a / m:.2f}x |", flush=True)


def load(base: str, key: str, clients: int, per_client: int, explain: bool) -> tuple[float, list[float]]:
    """`clients` threads, each with its own connection, send `per_client` feed requests in a row; returns the
    wall time of the whole load and every request's latency."""

    def client(index: int) -> list[float]:
        latencies = []
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=600) as http:
            for n in range(per_client):
                user = DEMO_USERS[(index + n * clients) % len(DEMO_USERS)]
                start = time.perf_counter()
                response = http.post("/v1/feed", json={"user_id": user, "k": 10, "explain": explain})
                latencies.append(time.perf_counter() - start)
                response.raise_for_status()
        return latencies

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = [t for per in pool.map(client, range(clients)) for t in per]
    return time.perf_counter() - start, latencies


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=4, help="feed requests per client")
    parser.add_argument("--window-ms", type=float, default=5.0, help="the MicroBatcher's collection window")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each mode, in alternating order")
    args = parser.parse_args()
    offline()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request
    key = secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            data_dir=Path(tmp),
            threads=args.threads,
            api_keys=json.dumps([{"name": "bench", "key": key, "scope": "admin"}]),
        )
        backend = TransformersBackend(settings.llm, settings.model_cache, settings.batch_size, settings.threads)
        plain = Newsrank.from_settings(settings, backend=backend)
        demo.seed(plain.articles, plain.feedback, plain.clock(), show_progress=False)
        backend.warm()
        batcher = MicroBatcher(backend, max_wait_ms=args.window_ms)
        modes: dict[str, Backend] = {"plain": backend, "micro-batched": batcher}
        print(f"model {settings.llm} on {backend.name}, torch threads {args.threads or 'default'}, {args})")
        calls_alone(plain, backend, args.rounds + 1)
        print()
        print("| explanations | backend | requests/s | p50 (s) | p95 (s) | batched / plain |")
        print("|---|---|---:|---:|---:|---:|")
        for explain in (False, True):
            seconds: dict[str, float] = dict.fromkeys(modes, 0.0)
            latencies: dict[str, list[float]] = {mode: [] for mode in modes}
            for turn in range(args.rounds):
                # alternate the order (plain first, then batched first, ...) so drift in a shared machine's load
                # does not favour one mode
                for mode in list(modes)[:: 1 if turn % 2 == 0 else -1]:
                    service = Newsrank(settings, plain.articles, plain.feedback, modes[mode], adapters=plain.adapters)
                    with serving(service) as base:
                        load(base, key, args.clients, 1, explain)  # warm up: connections, code paths, allocator
                        wall, times = load(base, key, args.clients, args.requests, explain)
                    seconds[mode] += wall
                    latencies[mode] += times
            throughput = {mode: len(latencies[mode]) / seconds[mode] for mode in modes}
            for mode in modes:
                p50 = statistics.median(latencies[mode])
                p95 = statistics.quantiles(latencies[mode], n=20, method="inclusive")[-1]
                ratio = f"{throughput[mode] / throughput['plain']:.2f}x" if mode != "plain" else ""
                shown = "on" if explain else "off"
                print(f"| {shown} | {mode} | {throughput[mode]:.2f} | {p50:.2f} | {p95:.2f} | {ratio} |", flush=True)
        print(f"MicroBatcher stats, warm-ups included: {dict(sorted(batcher.stats.items()))}")


if __name__ == "__main__":
    main()
