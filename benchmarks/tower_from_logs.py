"""The tower trained from a platform's logs (`newsrank tower fit`) against the same impressions read directly.

    python benchmarks/tower_from_logs.py [--heads 4] [--epochs 2]

mind-train's impressions (but its last 300 by time, the ranker's share) are written into a feedback store as the
rankings a service would have recorded (each impression's candidates in MIND's order, at its time), the reader's
MIND history as clicks the day before it and the impression's clicks a minute after; their news go into a Chroma
store with their readings (the replay's cache of what the packaged LLM gives). `feed.tower_fit` reads them back
and trains the heads as `newsrank tower fit` does, and `benchmarks/tower.py`'s training reads the same impressions
from the replay. Both towers' match alone is reported on the first 300 held-out impressions of MIND-dev, with the
seconds each took, reading from the stores included.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llm_training import DATA, RANKER_WEEK, WEEK
from tower import CACHE, auc, impressions

from config.settings import PACKAGED_LLM, Settings
from core.records import Event, RankedItem, RankingRecord
from evaluation import replay
from feed import tower_fit
from llm import tower
from retrieval.embed import Embedder
from retrieval.store import ChromaArticleStore, chroma_client
from store.sqlite import SqliteFeedbackStore


class Cached:
    """The replay corpus's readings as an article reader: what the packaged LLM gave, read from the cache."""

    def __init__(self, corpus: replay.Corpus) -> None:
        self.corpus = corpus

    def __call__(self, articles) -> np.ndarray:
        return self.corpus.readings[[self.corpus.index[a.id] for a in articles]]


def logged(week: list[replay.Impression], corpus: replay.Corpus, folder: Path):
    """The impressions as a service's stores would hold them."""
    articles = ChromaArticleStore(chroma_client(folder / "chroma"), Embedder(), "news", reader=Cached(corpus))
    needed = sorted({a for i in week for a in (*i.history, *i.candidates) if a in corpus})
    articles.upsert(corpus.articles[a] for a in needed)
    feedback = SqliteFeedbackStore(folder / "feedback.sqlite3")
    for n, imp in enumerate(week):
        at = imp.time or 0.0
        read = [a for a in imp.history if a in corpus]
        feedback.add_events([Event(imp.user_id, a, "click", at - 86400 + k) for k, a in enumerate(read)])
        items = tuple(RankedItem(p, a, corpus.articles[a].title, 0.0, {}, 0.0)
                      for p, a in enumerate((c for c in imp.candidates if c in corpus), 1))  # fmt: skip
        feedback.record_ranking(RankingRecord(f"{n:032x}", imp.user_id, at, "pointwise", "v", "replay", "m", None, {},
                                              "", False, items))  # fmt: skip
        clicked = [c for c, label in zip(imp.candidates, imp.labels, strict=True) if label and c in corpus]
        feedback.add_events([Event(imp.user_id, c, "click", at + 60) for c in clicked])
    return articles, feedback


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    reader = tower.ArticleReader(PACKAGED_LLM, Settings().model_cache, Settings().threads)
    dev = replay.Corpus(DATA / "news.tsv", Embedder(), CACHE, reader=reader)
    week_corpus = replay.Corpus(WEEK / "news.tsv", Embedder(), CACHE, reader=reader)
    behaviors, _ = replay.read_behaviors(WEEK / "behaviors.tsv")
    week = sorted(behaviors, key=lambda i: (i.time or 0.0, i.id))[:-RANKER_WEEK]
    held, _ = replay.read_behaviors(DATA / "behaviors.tsv")
    heldout = list(replay.contexts(replay.select(held, "heldout", 0, 300), dev))
    options = {"heads": args.heads, "epochs": args.epochs, "base_model": PACKAGED_LLM, "progress": False}

    start = time.perf_counter()
    direct = tower.train(impressions(list(replay.contexts(week, week_corpus)), "reading"), **options)
    direct_seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as folder:
        articles, feedback = logged(week, week_corpus, Path(folder))
        start = time.perf_counter()
        examples = tower_fit.from_feedback(feedback, articles, float("-inf"))
        from_logs, _ = tower_fit.fit_and_gate(examples, None, validation_share=0.0, **options)
        logs_seconds = time.perf_counter() - start
        feedback.close()
    print(f"{len(week)} mind-train impressions; the match alone on the first {len(heldout)} held-out impressions\n")
    print("| trained from | impressions used | held-out AUC | seconds (reading included) |\n|---|---:|---:|---:|")
    for name, trained, seconds in (("the replay (benchmarks/tower.py)", direct, direct_seconds),
                                   ("the stores (`newsrank tower fit`)", from_logs, logs_seconds)):  # fmt: skip
        mean, se = auc(heldout, lambda ctx, t=trained: t.match([h.reading for h in ctx.profile.history],
                                                                [h.reading for h in ctx.hits]))  # fmt: skip
        print(f"| {name} | {trained.card['impressions']:,} | {mean:.2f} ± {se:.2f} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
