"""Feed latency on this machine: the product's cached-prefix scoring against full prompts, side by side.

    .venv/bin/python benchmarks/feed_latency.py [--candidates 20 50] [--repeats 3]

Seeds the demo corpus into a temporary data dir, loads the configured LLM once, then for each candidate count
times (median of the repeats) a whole feed request with and without explanations, and the relevance step
alone with the shared-prefix KV cache versus every prompt in full. Ratios compare runs in this same process.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from config.settings import Settings
from core.llm import ScoreRequest
from feed.recommender import FeedRequest
from llm.models import offline
from llm.relevance import relevance_requests
from serve import demo
from serve.service import Newsrank


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--candidates", type=int, nargs="+", default=[20, 50])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--user", default="demo-sports")
    args = parser.parse_args()
    offline()
    with tempfile.TemporaryDirectory() as tmp:
        service = Newsrank.from_settings(Settings(data_dir=Path(tmp)))
        demo.seed(service.articles, service.feedback, service.clock(), show_progress=False)
        service.backend.warm()
        recommender = service.recommender
        print(f"model {service.settings.llm} on {service.backend.name}, user {args.user}, median of {args.repeats}")
        print(
            "| candidates | feed, no explanations (s) | feed + 3 explanations (s) | relevance, cached prefix (s) "
            "| relevance, full prompts (s) | full / cached |"
        )
        print("|---:|---:|---:|---:|---:|---:|")
        for n in args.candidates:
            recommender.settings = service.settings.model_copy(update={"candidates": n})
            plain = median_seconds(
                lambda: recommender.recommend(FeedRequest(args.user, 10, explain=False)), args.repeats
            )
            explained = median_seconds(
                lambda: recommender.recommend(FeedRequest(args.user, 10, explain=True)), args.repeats
            )
            profile = recommender.profile(args.user)
            hits = recommender.candidates(profile)
            requests = relevance_requests(service.backend, profile.render(), [h.article for h in hits])
            assert len(requests) == n, f"only {len(requests)} candidates in the store window"
            full = [ScoreRequest("", r.prompt) for r in requests]  # no shared prefix: every prompt in full
            cached_s = median_seconds(lambda batch=requests: service.backend.score(batch), args.repeats)
            full_s = median_seconds(lambda batch=full: service.backend.score(batch), args.repeats)
            print(f"| {n} | {plain:.2f} | {explained:.2f} | {cached_s:.2f} | {full_s:.2f} | {full_s / cached_s:.1f}x |")


if __name__ == "__main__":
    main()
