"""The LLM's match of readers and articles (llm/tower.py): train the heads, and measure them alone.

    python benchmarks/tower.py [--save FILE] [--compare] [--model PATH] [--fraction F] [--seed S]
                               [--week N] [--in-domain N]

Trained on the adapters' share of the data (mind-train but its last 300 impressions by time, and the first 500
impressions of MIND-dev's tune part), as the shipped adapter was; reported on the first 300 held-out impressions
(AUC ± its standard error over impressions). Each reader is their profile's history as the feed builds it (the
latest 20 clicks). `--compare` trains the same heads on the retrieval embedder's vectors instead of the LLM's
readings, and reports both raw cosines: what the LLM adds over the embedder. `benchmarks/ranker.py --tower FILE`
then fits the ranker with the match as a signal. `--model`: another causal LM in a local folder reads the
articles (the tower's card names it, and a service serving that tower reads stored articles with it): a larger
model costs one forward pass per article as it is stored, not one per reader and candidate. `--week N` and
`--in-domain N` train on the first N impressions of the week and of the tune part only (the tune part shares the
held-out part's day): how much each kind of click is worth.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llm_training import ADAPTER_PART, DATA, RANKER_WEEK, WEEK  # the adapters' share of the data, as they train

from config.settings import PACKAGED_LLM, Settings
from core import metrics
from evaluation import replay
from llm import tower
from retrieval.embed import Embedder

CACHE = Path("data/eval-cache")


def corpora(reader: tower.ArticleReader) -> tuple[replay.Corpus, replay.Corpus]:
    return (replay.Corpus(DATA / "news.tsv", Embedder(), CACHE, reader=reader),
            replay.Corpus(WEEK / "news.tsv", Embedder(), CACHE, reader=reader))  # fmt: skip


def parts(
    reader: tower.ArticleReader,
) -> tuple[list[replay.Context], list[replay.Context], list[replay.Context]]:
    """(the adapters' share of the week, of the tune part, the first 300 held-out impressions) as contexts; the
    ranker's share (the week's last impressions, the tune part's rest) is left to benchmarks/ranker.py."""
    dev, week_corpus = corpora(reader)
    impressions, _ = replay.read_behaviors(DATA / "behaviors.tsv")
    tune = replay.select(impressions, "tune", 0, None)
    week, _ = replay.read_behaviors(WEEK / "behaviors.tsv")
    ordered = sorted(week, key=lambda i: (i.time or 0.0, i.id))
    return (list(replay.contexts(ordered[:-RANKER_WEEK], week_corpus)), list(replay.contexts(tune[:ADAPTER_PART], dev)),
            list(replay.contexts(replay.select(impressions, "heldout", 0, 300), dev)))  # fmt: skip


def impressions(contexts: list[replay.Context], vectors: str) -> list[tower.Impression]:
    """What the heads learn from: `vectors` "reading" (the LLM's) or "embedding" (the retrieval embedder's)."""
    out = []
    for ctx in contexts:
        history = [getattr(h, vectors) for h in ctx.profile.history]
        if history:
            out.append(tower.Impression(np.stack(history), np.stack([getattr(h, vectors) for h in ctx.hits]),
                                        ctx.labels))  # fmt: skip
    return out


def auc(contexts: list[replay.Context], score) -> tuple[float, float]:
    values = [metrics.auc(ctx.labels, score(ctx)) for ctx in contexts if ctx.profile.history]
    kept = [100 * v for v in values if v is not None]
    return float(np.mean(kept)), metrics.standard_error(kept)


def raw_cosine(vectors: str):
    def score(ctx: replay.Context) -> list[float]:
        reader = np.mean([getattr(h, vectors) for h in ctx.profile.history], axis=0)
        items = np.stack([getattr(h, vectors) for h in ctx.hits])
        return (items @ reader / (np.linalg.norm(items, axis=1) * np.linalg.norm(reader) + 1e-9)).tolist()

    return score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--save", help="write the tower trained on the LLM's readings here")
    parser.add_argument("--compare", action="store_true", help="the same heads on the retrieval embedder's vectors")
    parser.add_argument("--model", default=PACKAGED_LLM, help="the LLM that reads the articles (a local folder)")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--fraction", type=float, default=1.0, help="train on this share of the impressions")
    parser.add_argument("--seed", type=int, default=0, help="seeds the heads and the share")
    parser.add_argument("--week", type=int, help="only the week's first N impressions (in time order)")
    parser.add_argument("--in-domain", type=int, help="only the tune part's first N impressions (MIND-dev's days)")
    args = parser.parse_args()
    settings = Settings()
    reader = tower.ArticleReader(args.model, settings.model_cache, settings.threads)
    week, in_domain, heldout = parts(reader)
    train = week[: args.week] + in_domain[: args.in_domain]
    if args.fraction < 1.0:
        chosen = np.random.default_rng(args.seed).permutation(len(train))[: round(args.fraction * len(train))]
        train = [train[i] for i in sorted(chosen)]
    print(f"{len(train)} training impressions; AUC alone on the first {len(heldout)} held-out impressions\n")
    print("| vectors | raw cosine to the history's mean | heads trained on clicks | seconds to train |")
    print("|---|---:|---:|---:|")
    for vectors, name in (("reading", "the LLM's readings"), ("embedding", "the retrieval embedder's"))[
        : 2 if args.compare else 1
    ]:
        start = time.perf_counter()
        trained = tower.train(impressions(train, vectors), heads=args.heads, epochs=args.epochs, seed=args.seed,
                              base_model=args.model, vectors=vectors)  # fmt: skip
        seconds = time.perf_counter() - start
        held, held_se = auc(heldout, lambda ctx, t=trained, v=vectors: t.match(
            [getattr(h, v) for h in ctx.profile.history], [getattr(h, v) for h in ctx.hits]))  # fmt: skip
        raw, raw_se = auc(heldout, raw_cosine(vectors))
        print(f"| {name} | {raw:.2f} ± {raw_se:.2f} | **{held:.2f} ± {held_se:.2f}** | {seconds:.0f} |", flush=True)
        if vectors == "reading" and args.save:
            drawn = f", a share of {args.fraction:g} of them drawn with seed {args.seed}" if args.fraction < 1 else ""
            card = {**trained.card, "data": f"mind-train's first {len(week[: args.week])} impressions by time (of all "
                    f"but its last 300) and the first {len(in_domain[: args.in_domain])} impressions of MIND-dev's "
                    f"tune part{drawn}", "command": "python benchmarks/tower.py --save FILE",
                    "heldout_auc": round(held, 2), "heldout_auc_se": round(held_se, 2),
                    "heldout": "the first 300 impressions of MIND-dev's held-out part, the match alone"}  # fmt: skip
            replace(trained, card=card).save(Path(args.save))
            print(f"tower written to {args.save}")


if __name__ == "__main__":
    main()
