"""Copies of one story, found: recall on MIND's exact-duplicate titles, precision on labelled near pairs, and what
finding them costs at ingest.

    .venv/bin/python benchmarks/stories.py recall      # the groups of exactly equal titles in mind-titles
    .venv/bin/python benchmarks/stories.py pairs       # near pairs found (not equal titles): the labelled sample
    .venv/bin/python benchmarks/stories.py ingest      # ingest with and without story finding, side by side
    .venv/bin/python benchmarks/stories.py search      # written queries, then feeds with two copies of a story
    .venv/bin/python benchmarks/stories.py stance      # comments' stance against benchmarks/comments.tsv

`recall`: every group of two or more articles of ../shared/data/mind-titles with exactly the same title (497 in
the MIND-small dev news, more in the 42,416 titles) should land in one story; a group counts as found when all
its members did. `pairs`: the pairs the detector linked whose titles differ, a seeded sample (`--sample`, 60) of the
pairs, judged against the labels written in benchmarks/stories_labels.tsv by reading each pair (1: the same
event, 0: not; the file keeps the two ids and the label, the titles stay in the data). `ingest`: the same
articles into two embedded Chroma stores, one finding stories, one not.
`feeds` and `search` (either runs both, searches first: the ingest is most of the time) run the service on the
demo corpus and the MIND-small dev news (9,061 articles, their copies found at ingest). The searches: each query
of benchmarks/search_queries.tsv sent to POST /v1/search over HTTP (a demo reader each, in turn), counting the
queries whose top 5 hold a relevant article (the label: a pattern an article's title or abstract matches,
written with the query), with the latency of each request. The feeds: a top-10 feed for every demo reader and
for 300 MIND-dev readers (each impression's history as the reader's clicks), counting feeds that show two
articles of one story. `stance`: feed/stance.py on the 50 comments of benchmarks/comments.tsv, labelled by hand
(+ for, - against, 0 neither).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
import re
import secrets
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import httpx
import numpy as np
from harness import quiet_logs, serving, start_service  # benchmarks/harness.py

from config.settings import Settings
from core.records import Event
from evaluation import replay
from evaluation.stats import wilson
from feed.recommender import FeedRequest
from retrieval import stories
from retrieval.embed import Embedder
from retrieval.store import ChromaArticleStore, chroma_client
from serve.service import DEMO_USERS, Newsrank

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TITLES = DATA / "mind-titles" / "news.tsv"
QUERIES = Path(__file__).with_name("search_queries.tsv")
COMMENTS = Path(__file__).with_name("comments.tsv")
KEY = secrets.token_urlsafe(24)
LABELS = Path(__file__).with_name("stories_labels.tsv")


def corpus() -> tuple[list, np.ndarray]:
    found = replay.Corpus(TITLES, Embedder(), Path("data/eval-cache"), show_progress=True)
    ids = sorted(found.articles)
    return [found.articles[i] for i in ids], found.vectors[[found.index[i] for i in ids]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", choices=["recall", "pairs", "ingest", "feeds", "search", "stance"])
    parser.add_argument("--sample", type=int, default=60)
    parser.add_argument("--articles", type=int, default=2000, help="ingest: this many articles")
    parser.add_argument("--readers", type=int, default=300, help="feeds: this many MIND-dev readers")
    parser.add_argument("--rounds", type=int, default=3, help="search: timed rounds over the queries")
    args = parser.parse_args()
    if args.experiment == "ingest":
        return ingest(args.articles)
    if args.experiment == "stance":
        return stance()
    if args.experiment in ("feeds", "search"):
        with tempfile.TemporaryDirectory() as folder:
            service = mind_service(Path(folder))
            search(service, args.rounds)  # both: the ingest is most of the time
            return feeds(service, args.readers)
    articles, vectors = corpus()
    started = time.perf_counter()
    found = stories.group(articles, vectors)
    print(f"{len(articles)} articles grouped in {time.perf_counter() - started:.0f} s: {len(set(found))} stories")
    by_title = defaultdict(list)
    for i, a in enumerate(articles):
        by_title[a.title].append(i)
    groups = [g for g in by_title.values() if len(g) > 1]
    if args.experiment == "recall":
        whole = sum(len({found[i] for i in g}) == 1 for g in groups)
        pairs = [(i, j) for g in groups for n, i in enumerate(g) for j in g[n + 1 :]]
        linked = sum(found[i] == found[j] for i, j in pairs)
        print(f"| exact-title groups | found whole | pairs | pairs in one story |\n|---:|---:|---:|---:|\n"
              f"| {len(groups)} | {whole} ({100 * whole / len(groups):.1f}%) | {len(pairs)} | "
              f"{linked} ({100 * linked / len(pairs):.1f}%) |")  # fmt: skip
        return
    linked = {(min(i, j), max(i, j)) for story in _members(found).values() for i in story for j in story if i != j}
    near = sorted((i, j) for i, j in linked if articles[i].title != articles[j].title)
    print(f"{len(near)} linked pairs with different titles")
    labels = {}
    if LABELS.is_file():
        with LABELS.open() as f:
            labels = {(r["a"], r["b"]): int(r["same"]) for r in csv.DictReader(f, delimiter="\t")}
    sample = random.Random(0).sample(near, min(args.sample, len(near)))
    judged = [(articles[i], articles[j]) for i, j in sample]
    unlabelled = [(a, b) for a, b in judged if (a.id, b.id) not in labels]
    for a, b in unlabelled:  # to be judged and added to the labels
        print(f"{a.id}\t{b.id}\t?\t# {a.title} | {b.title}")
    scored = [labels[(a.id, b.id)] for a, b in judged if (a.id, b.id) in labels]
    if scored:
        share = wilson(sum(scored) / len(scored), math.inf, len(scored), len(scored))
        print(f"precision on {len(scored)} labelled near pairs ({len(unlabelled)} not labelled): "
              f"{100 * share.value:.1f}% (95% interval {100 * share.low:.0f}-{100 * share.high:.0f}%)")  # fmt: skip


def _members(found: list[str]) -> dict[str, list[int]]:
    members = defaultdict(list)
    for i, story in enumerate(found):
        members[story].append(i)
    return {s: m for s, m in members.items() if len(m) > 1}


def ingest(n: int) -> None:
    articles, _ = corpus()
    chosen = random.Random(1).sample(articles, n)
    embedder = Embedder()
    embedder.encode(["warm"])
    print("| stories | articles | seconds | articles/s |\n|---|---:|---:|---:|")
    speeds = {}
    for finding in (False, True, False, True):  # twice each, alternating: the machine's noise shows
        with tempfile.TemporaryDirectory() as folder:
            store = ChromaArticleStore(chroma_client(Path(folder)), embedder, "bench", find_stories=finding)
            started = time.perf_counter()
            store.upsert(chosen)
            seconds = time.perf_counter() - started
        speeds.setdefault(finding, []).append(n / seconds)
        print(f"| {'found' if finding else 'not found'} | {n} | {seconds:.1f} | {n / seconds:.0f} |", flush=True)
    print(f"with stories: {np.mean(speeds[True]) / np.mean(speeds[False]):.2f} of the articles per second without")


def stance() -> None:
    from feed.stance import stance as said

    with COMMENTS.open() as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    labels = "+-0"
    found = [(r["label"], "+" if (s := said(r["comment"])) > 0 else "-" if s < 0 else "0") for r in rows]
    right = sum(a == b for a, b in found)
    print(f"accuracy on {len(rows)} labelled comments: {right}/{len(rows)} ({100 * right / len(rows):.0f}%)")
    print("| labelled \\ found | " + " | ".join(labels) + " |\n|---|" + "---:|" * len(labels))
    for a in labels:
        print(f"| {a} | " + " | ".join(str(sum(f == (a, b) for f in found)) for b in labels) + " |")
    for (a, b), row in zip(found, rows, strict=True):
        if a != b:
            print(f"labelled {a}, found {b}: {row['comment']}")


def mind_service(folder: Path) -> Newsrank:
    """The service (embedded stores, the packaged LLM, no background scorer) on the demo and MIND-dev news."""
    quiet_logs()
    keys = [{"name": "bench", "key": KEY, "scope": "admin"}]
    settings = Settings(data_dir=folder, api_keys=json.dumps(keys), scorer_threads=0,
                        feeds_per_reader_per_minute=100_000, position_explore_share=0.0)  # fmt: skip
    service = start_service(settings)
    started = time.perf_counter()
    report = service.ingest(DATA / "mind-dev" / "news.tsv")
    print(f"{report.ingested} MIND-dev articles ingested in {time.perf_counter() - started:.0f} s; "
          f"{service.articles.count()} in the store")  # fmt: skip
    return service


def feeds(service: Newsrank, readers: int) -> None:
    impressions, _ = replay.read_behaviors(DATA / "mind-dev" / "behaviors.tsv")
    chosen = [i for i in replay.select(impressions, "tune", 0, None) if i.history][:readers]
    now = service.clock()
    for impression in chosen:  # each impression its own reader: the history's clicks, an hour apart
        history = impression.history[-50:]
        service.feedback.add_events([Event(f"mind-{impression.id}", a, "click", now - 3600 * (len(history) - n))
                                     for n, a in enumerate(history)])  # fmt: skip
    doubled, shown, sizes = [], 0, []
    for user_id in (*DEMO_USERS, *(f"mind-{i.id}" for i in chosen)):
        feed = service.recommend(FeedRequest(user_id, k=10, explain=False))
        stories_shown = [item.article.story or item.article.id for item in feed.items]
        sizes.append(len(feed.items))
        shown += sum(item.record.copies > 1 for item in feed.items)
        if len(set(stories_shown)) < len(stories_shown):
            doubled.append(user_id)
    print(f"| feeds | items per feed (mean) | items of a story with copies | feeds with two copies of one story |\n"
          f"|---:|---:|---:|---:|\n| {len(sizes)} ({len(DEMO_USERS)} demo readers, {len(chosen)} MIND-dev) | "
          f"{np.mean(sizes):.1f} | {shown} | {len(doubled)} |")  # fmt: skip
    for user_id in doubled[:5]:
        print(f"two copies in the feed of {user_id}")


def search(service: Newsrank, rounds: int) -> None:
    with QUERIES.open() as f:
        queries = list(csv.DictReader(f, delimiter="\t"))
    articles = {}
    found = []
    latencies = []
    with serving(service) as base, httpx.Client(base_url=base, timeout=60) as http:
        auth = {"Authorization": f"Bearer {KEY}"}
        for round_ in range(rounds + 1):  # the first round warms the code paths; it is not timed
            for n, row in enumerate(queries):
                body = {"user_id": DEMO_USERS[n % len(DEMO_USERS)], "query": row["query"], "k": 5}
                started = time.perf_counter()
                answer = http.post("/v1/search", json=body, headers=auth)
                seconds = time.perf_counter() - started
                answer.raise_for_status()
                if round_:
                    latencies.append(seconds)
                else:
                    ids = [item["article_id"] for item in answer.json()["items"]]
                    articles |= {i: h.article for i, h in service.articles.get(ids).items()}
                    found.append((row, ids))
    print("| query | corpus | relevant in the top 5 | first title |\n|---|---|---:|---|")
    hits = 0
    for row, ids in found:
        relevant = [i for i in ids if re.search(row["relevant"], f"{articles[i].title} {articles[i].abstract}", re.I)]
        hits += bool(relevant)
        print(f"| {row['query']} | {row['corpus']} | {len(relevant)} | {articles[ids[0]].title[:60] if ids else ''} |")
    p50, p95 = (1000 * float(np.percentile(latencies, q)) for q in (50, 95))
    print(f"\nqueries with a relevant article in the top 5: {hits}/{len(found)} ({100 * hits / len(found):.0f}%); "
          f"over HTTP, {len(latencies)} requests: p50 {p50:.0f} ms, p95 {p95:.0f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
