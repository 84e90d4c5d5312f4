"""Simulated readers over simulated days: the learning loop against a frozen zero-shot product, side by side.

    .venv/bin/python benchmarks/simulate.py [--days 7] [--readers 60] [--articles-per-day 120] [--seed 0]

Readers are MIND users of ../shared/data/mind-train: each reader's latent preference is their real history (the
mean embedding of the titles they read, and their share of reading per category), and an article's true
relevance to them is σ(6 (cos(article, their history) − 0.35) + 2 share(its category)) × 0.6. The simulator
knows nothing of the models: every day, new articles of that week's news are published through the API; every
reader asks for a feed of 10 through the API and clicks through a position-biased model (the k-th place is
looked at with probability k^-0.8, then clicked with the article's true relevance), sends the clicks (naming the
feed) and now and then a rating. Two services run on the same readers and articles: "frozen" (the zero-shot
model, the hand-set weights, no loop) and "loop" (NEWSRANK_RETRAIN_EVERY_EVENTS: it retrains, gates, A/B-tests
and promotes by itself, no human step). A day's end runs each service's background scorer and loop until idle.
Prints each day's click-through rate (clicks per item shown) of both, and the loop's history.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from harness import quiet_logs, serving  # benchmarks/harness.py

from config.settings import Settings
from evaluation import replay
from llm.models import offline
from retrieval.embed import Embedder
from serve.learning import LearningLoop
from serve.service import Newsrank
from serve.worker import ScoringWorkers

WEEK = Path(__file__).resolve().parents[2] / "shared" / "data" / "mind-train"
KEY = "simulation-key-0123456789abcdef"
EXAMINED = 0.8  # the k-th place is looked at with probability k^-EXAMINED


class Reader:
    def __init__(self, user_id: str, centroid: np.ndarray, shares: dict[str, float]) -> None:
        self.user_id, self.centroid, self.shares = user_id, centroid, shares

    def relevance(self, vector: np.ndarray, category: str) -> float:
        cos = float(vector @ self.centroid / (np.linalg.norm(vector) * np.linalg.norm(self.centroid) + 1e-9))
        return 0.6 / (1 + math.exp(-(6 * (cos - 0.35) + 2 * self.shares.get(category, 0.0))))


def world(readers: int, per_day: int, days: int, seed: int) -> tuple[list[Reader], list[list[dict]], dict]:
    """The readers (with their real histories), each day's new articles, and every article's embedding."""
    impressions, _ = replay.read_behaviors(WEEK / "behaviors.tsv")
    corpus = replay.Corpus(WEEK / "news.tsv", Embedder(), Path("data/eval-cache"), show_progress=False)
    rng = random.Random(seed)
    users = {}
    for imp in impressions:
        known = [a for a in imp.history if a in corpus]
        if imp.user_id and len(known) >= 5 and imp.user_id not in users:
            users[imp.user_id] = known
    chosen = rng.sample(sorted(users), readers)
    people = []
    for user in chosen:
        history = users[user]
        vectors = np.stack([corpus.hit(a).embedding for a in history])
        counts = Counter(corpus.articles[a].category for a in history)
        people.append(Reader(f"sim-{user}", vectors.mean(axis=0), {c: n / len(history) for c, n in counts.items()}))
    candidates = sorted({c for imp in impressions for c in imp.candidates if c in corpus})
    rng.shuffle(candidates)
    daily = []
    for day in range(days):
        batch = candidates[day * per_day : (day + 1) * per_day]
        daily.append([{"id": a, "title": corpus.articles[a].title, "abstract": corpus.articles[a].abstract,
                       "category": corpus.articles[a].category, "subcategory": corpus.articles[a].subcategory}
                      for a in batch])  # fmt: skip
    return people, daily, {a: corpus.hit(a).embedding for day in daily for a in (r["id"] for r in day)}


def service(folder: Path, learning: bool, retrain_every: int) -> tuple[Newsrank, LearningLoop | None]:
    keys = [{"name": "sim", "key": KEY, "scope": "admin"}]
    settings = Settings(
        data_dir=folder, api_keys=json.dumps(keys), scorer_threads=0, adapter="sim" if learning else None,
        ranker="sim" if learning else None, retrain_every_events=retrain_every if learning else None,
        loop_treatment_share=0.5, loop_min_feeds=40, loop_max_feeds=400, recency_hours=24 * 3,
        feeds_per_reader_per_minute=1000, position_explore_share=0.05, candidates=30,
    )  # fmt: skip
    built = Newsrank.from_settings(settings)
    return built, LearningLoop(built) if learning else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--readers", type=int, default=60)
    parser.add_argument("--articles-per-day", type=int, default=120)
    parser.add_argument("--retrain-every", type=int, default=100, help="engagement events between trainings")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    offline()
    quiet_logs()
    people, daily, vectors = world(args.readers, args.articles_per_day, args.days, args.seed)
    rng = random.Random(args.seed)
    print("| day | frozen CTR | loop CTR | lift | loop: served adapter, what it did |\n|---:|---:|---:|---:|---|")
    with tempfile.TemporaryDirectory() as tmp:
        services = {name: service(Path(tmp) / name, name == "loop", args.retrain_every) for name in ("frozen", "loop")}
        with serving(services["frozen"][0]) as frozen_url, serving(services["loop"][0]) as loop_url:
            urls = {"frozen": frozen_url, "loop": loop_url}
            for day, articles in enumerate(daily, start=1):
                clicked: Counter = Counter()
                shown: Counter = Counter()
                for name, base in urls.items():
                    http = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {KEY}"}, timeout=600)
                    http.post("/v1/articles", json={"articles": articles}).raise_for_status()
                    for reader in people:
                        feed = http.post("/v1/feed", json={"user_id": reader.user_id, "explain": False})
                        feed.raise_for_status()
                        body, events = feed.json(), []
                        for item in body["items"]:  # what the reader looked at: an impression, perhaps a click
                            if rng.random() >= item["position"] ** -EXAMINED:
                                continue
                            true = reader.relevance(vectors[item["article_id"]], item["category"])
                            kind = "click" if rng.random() < true else "impression"
                            events.append({"user_id": reader.user_id, "article_id": item["article_id"],
                                           "type": kind, "ranking_id": body["ranking_id"]})  # fmt: skip
                        if rng.random() < 0.2:
                            liked = any(e["type"] == "click" for e in events)
                            events.append({"user_id": reader.user_id, "type": "rating", "article_id": "",
                                           "ranking_id": body["ranking_id"], "value": 5 if liked else 2})  # fmt: skip
                        shown[name] += len(body["items"])
                        clicked[name] += sum(e["type"] == "click" for e in events)
                        if events:
                            http.post("/v1/events", json={"events": events}).raise_for_status()
                    built, loop = services[name]
                    ScoringWorkers(built.recommender, 1).run_until_idle()  # the day's scoring
                    while loop is not None and loop.tick() is not None:  # train, gate, test, decide
                        wait_for_training(built)
                ctr = {n: clicked[n] / max(shown[n], 1) for n in urls}
                active = services["loop"][0].recommender.default_adapter()
                history = [e["kind"] for e in services["loop"][0].feedback.loop_events(20)][::-1]
                lift = ctr["loop"] / max(ctr["frozen"], 1e-9) - 1
                print(f"| {day} | {ctr['frozen']:.4f} | {ctr['loop']:.4f} | {lift:+.1%} | {active or 'zero-shot'}; "
                      f"{', '.join(history[-4:])} |", flush=True)  # fmt: skip


def wait_for_training(built: Newsrank, timeout: float = 3600) -> None:
    deadline = time.monotonic() + timeout
    while any(j.status == "running" for j in built.feedback.jobs()) and time.monotonic() < deadline:
        time.sleep(2)


if __name__ == "__main__":
    main()
