"""What the LLM's match (llm/tower.py) costs: at ingest (each article read by the LLM) and per feed (readings
carried in the store's metadata, the heads' numpy), side by side with the same service without it.

    .venv/bin/python benchmarks/match_cost.py [--articles 3000] [--readers 10] [--rounds 5]

Two embedded Chroma collections in one temporary data dir, the same MIND titles (`../shared/data/mind-titles`,
published over the last day) ingested into both in alternating chunks of 256: one with the shipped tower's reader,
one without. Then two services on the same feedback store (readers with 8 clicks each), one serving the shipped
tower on the first collection and one with none on the second, asked for the same feeds (k = 10, from stored
scores: the LLM is not called) in turns, the order alternating. Prints articles/s at ingest and the feeds' p50
and p95, with ratios.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config.settings import Settings
from core.records import Article, Event
from feed.recommender import FeedRequest
from llm.models import offline
from retrieval.embed import Embedder
from retrieval.ingest import read_mind_news
from retrieval.store import ChromaArticleStore, chroma_client
from serve import shipped
from serve.service import Newsrank, make_backend
from store import open_store

TITLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "mind-titles" / "news.tsv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--articles", type=int, default=3000)
    parser.add_argument("--readers", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    offline()
    tower = shipped.tower(Settings(tower=shipped.NAME))
    if tower is None:
        sys.exit("serve/shipped holds no tower")
    now = time.time()
    rows = [r for r in read_mind_news(TITLES, now) if isinstance(r, Article)][: args.articles]
    articles = [replace(a, published_at=now - 86400 * i / len(rows)) for i, a in enumerate(rows)]
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), tower=None, adapter=None, ranker=None, scorer_threads=0)
        client, embedder = chroma_client(settings.chroma_dir), Embedder(settings.embedder)
        read = ChromaArticleStore(client, embedder, "read", reader=tower.article_reader(settings.model_cache))
        plain = ChromaArticleStore(client, embedder, "plain")
        read.upsert(articles[:8])  # loads the reader's model: not counted
        seconds = {"read": 0.0, "plain": 0.0}
        for n, start in enumerate(range(0, len(articles), 256)):
            chunk = articles[start : start + 256]
            for name, store in sorted((("read", read), ("plain", plain)), reverse=n % 2 == 1):
                began = time.perf_counter()
                store.upsert(chunk)
                seconds[name] += time.perf_counter() - began
        per_s = {name: len(articles) / s for name, s in seconds.items()}
        print(f"ingest of {len(articles)} titles: with readings {per_s['read']:.0f} articles/s, without "
              f"{per_s['plain']:.0f} ({per_s['plain'] / per_s['read']:.1f}x)")  # fmt: skip

        feedback = open_store(settings.store_url)
        backend = make_backend(settings)
        services = {"match": Newsrank(settings, read, feedback, backend, tower=tower),
                    "none": Newsrank(settings, plain, feedback, backend)}  # fmt: skip
        readers = [f"reader-{r}" for r in range(args.readers)]
        feedback.add_events([Event(reader, articles[(r * 97 + i * 13) % len(articles)].id, "click", now - 3600 + i)
                             for r, reader in enumerate(readers) for i in range(8)])  # fmt: skip
        times: dict[str, list[float]] = {name: [] for name in services}
        for round_ in range(args.rounds + 1):
            for r, reader in enumerate(readers):
                for name in sorted(services, reverse=(round_ + r) % 2 == 1):
                    began = time.perf_counter()
                    services[name].recommend(FeedRequest(reader, k=10))
                    if round_:  # the first round warms the caches
                        times[name].append(time.perf_counter() - began)
        print("| feeds | p50 ms | p95 ms |\n|---|---:|---:|")
        for name, values in times.items():
            p95 = statistics.quantiles(values, n=20)[-1]
            print(f"| {name} | {1000 * statistics.median(values):.1f} | {1000 * p95:.1f} |")
        ratio = statistics.median(times["match"]) / statistics.median(times["none"])
        print(f"p50 with the match / without: {ratio:.2f}x ({len(times['match'])} feeds each)")


if __name__ == "__main__":
    main()
