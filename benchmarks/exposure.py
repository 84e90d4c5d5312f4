"""What each exposure cap costs in ranking quality, next to the exposure it changes, on MIND-dev's held-out part.

    python benchmarks/exposure.py [--impressions 300] [--scores FILE]

Every arm ranks the same held-out impressions with the product's blend (hand-set weights, the packaged LLM's
zero-shot relevance), without caps and under each cap setting, side by side in one process: AUC and nDCG@10
(and their change against no cap, paired per impression) next to the Gini coefficient of item exposure, the
share of feeds with an item outside the reader's top 2 categories and of top-10 slots given to such items, the
categories in the top 10 and the
largest category's share of top-10 slots against its share among candidates. The LLM's scores are computed
once and cached (`--scores`). MIND's news carry no URL or publisher, so the per-source cap has nothing to act
on here: its behaviour is tested (tests/test_api.py) rather than measured.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config.settings import Settings
from core import metrics
from evaluation import replay
from retrieval.embed import Embedder

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mind-dev"
ARMS = {
    "no cap": {},
    "category ≤ 30%": {"category_share": 0.3},
    "category ≤ 20%": {"category_share": 0.2},
    "exploration ≥ 20%": {"exploration_share": 0.2},
    "exploration ≥ 40%": {"exploration_share": 0.4},
    "category ≤ 30% + exploration ≥ 30%": {"category_share": 0.3, "exploration_share": 0.3},
}


def llm_scores(contexts, path: Path, threads: int) -> dict[str, list[float]]:
    """The packaged LLM's zero-shot relevance of every candidate, cached by impression id."""
    from config.settings import PACKAGED_LLM
    from llm.backends.transformers import TransformersBackend

    done = {}
    if path.is_file():
        done = {row["id"]: row["scores"] for row in map(json.loads, path.read_text().splitlines())}
    todo = [c for c in contexts if c.impression.id not in done]
    if todo:
        from tqdm import tqdm

        backend = TransformersBackend(PACKAGED_LLM, Settings().model_cache, threads=threads)
        evaluator = replay.Evaluator(backend, Settings().weights.frozen())
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as out:
            for ctx in tqdm(todo, desc="LLM relevance"):
                done[ctx.impression.id] = evaluator.score("llm", ctx, lambda _: []).scores
                out.write(json.dumps({"id": ctx.impression.id, "scores": done[ctx.impression.id]}) + "\n")
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--impressions", type=int, default=300, help="the first N held-out impressions")
    parser.add_argument("--scores", default="data/exposure/heldout-llm.jsonl", help="the LLM's scores, cached")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    impressions, _ = replay.read_behaviors(DATA / "behaviors.tsv")
    corpus = replay.Corpus(DATA / "news.tsv", Embedder(), Path("data/eval-cache"))
    contexts = list(replay.contexts(replay.select(impressions, "heldout", 0, args.impressions), corpus))
    relevance = llm_scores(contexts, Path(args.scores), args.threads)
    weights = Settings().weights.frozen()

    print(f"MIND-dev held-out part, {len(contexts)} impressions; the hand-set blend over the zero-shot LLM")
    print(
        "| caps | AUC | Δ AUC | nDCG@10 | Δ nDCG@10 | Gini of item exposure | feeds reaching outside the "
        "top 2 categories | top-10 slots outside them | categories in the top 10 | largest category: top-10 share "
        "(among candidates) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    baseline = None
    for name, caps in ARMS.items():
        evaluator = replay.Evaluator(None, weights, caps=caps)
        rows = {
            c.impression.id: {"scores": evaluator.blend(c, relevance[c.impression.id])[0], "seconds": 0.0,
                              "prompt_tokens": 0}
            for c in contexts
        }  # fmt: skip
        report = replay.summarize("blend", rows, contexts)
        aucs = np.array([np.nan if (a := metrics.auc(c.labels, rows[c.impression.id]["scores"])) is None else a
                         for c in contexts])  # fmt: skip
        ndcgs = np.array([metrics.ndcg(c.labels, rows[c.impression.id]["scores"], 10) for c in contexts])
        if baseline is None:
            baseline = aucs, ndcgs
        d_auc, d_ndcg = 100 * (aucs - baseline[0]), 100 * (ndcgs - baseline[1])
        d_auc = d_auc[~np.isnan(d_auc)]
        label, (top, offered) = next(iter(sorted(report.exposure.category.items(), key=lambda kv: -kv[1][1])))
        print(f"| {name} | {report.auc:.2f} | {d_auc.mean():+.2f} ± {metrics.standard_error(list(d_auc)):.2f} | "
              f"{report.ndcg10:.2f} | {d_ndcg.mean():+.2f} ± {metrics.standard_error(list(d_ndcg)):.2f} | "
              f"{report.exposure.gini:.3f} | {100 * report.exposure.outside:.1f}% | "
              f"{100 * report.exposure.outside_slots:.1f}% | {report.coverage:.2f} | "
              f"{label}: {100 * top:.1f}% ({100 * offered:.1f}%) |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
