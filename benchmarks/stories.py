"""Copies of one story, found: recall on MIND's exact-duplicate titles, precision on labelled near pairs, and what
finding them costs at ingest.

    .venv/bin/python benchmarks/stories.py recall      # the groups of exactly equal titles in mind-titles
    .venv/bin/python benchmarks/stories.py pairs       # near pairs found (not equal titles): the labelled sample
    .venv/bin/python benchmarks/stories.py ingest      # ingest with and without story finding, side by side

`recall`: every group of two or more articles of ../shared/data/mind-titles with exactly the same title (497 in
the MIND-small dev news, more in the 42,416 titles) should land in one story; a group counts as found when all
its members did. `pairs`: the pairs the detector linked whose titles differ, a seeded sample of
benchmarks/stories_labels.tsv's size, judged against the labels written there by reading each pair (1: the same
event, 0: not). `ingest`: the same articles into two embedded Chroma stores, one finding stories, one not.
"""

from __future__ import annotations

import argparse
import csv
import random
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from evaluation import replay
from retrieval import stories
from retrieval.embed import Embedder
from retrieval.store import ChromaArticleStore, chroma_client

TITLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "mind-titles" / "news.tsv"
LABELS = Path(__file__).with_name("stories_labels.tsv")


def corpus() -> tuple[list, np.ndarray]:
    found = replay.Corpus(TITLES, Embedder(), Path("data/eval-cache"), show_progress=True)
    ids = sorted(found.articles)
    return [found.articles[i] for i in ids], found.vectors[[found.index[i] for i in ids]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", choices=["recall", "pairs", "ingest"])
    parser.add_argument("--sample", type=int, default=60)
    parser.add_argument("--articles", type=int, default=2000, help="ingest: this many articles")
    args = parser.parse_args()
    if args.experiment == "ingest":
        return ingest(args.articles)
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
    if not labels:
        for a, b in judged:
            print(f"{a.id}\t{b.id}\t?\t{a.title}\t{b.title}")
        return
    scored = [labels[(a.id, b.id)] for a, b in judged if (a.id, b.id) in labels]
    print(f"precision on {len(scored)} labelled near pairs: {100 * sum(scored) / len(scored):.1f}%")


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


if __name__ == "__main__":
    main()
