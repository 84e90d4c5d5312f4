"""The learned ranker on MIND-dev: which model, what each signal is worth, and how far the LLM carries it.

    python benchmarks/llm_training.py curve     # first: adapters at 4k, 8k, 16k and all examples, their scores
    python benchmarks/ranker.py [--scores data/llm-training/curve-listwise-8] [--plot docs/eval/learning-curve.png]
                                [--save RANKER_JSON] [--without SIGNAL ...] [--tower TOWER_FILE] [--brief]
                                [--ceiling]

Rankers are fitted on the ranker's share of the data, which no adapter was trained on: the tune impressions after
the adapters' first 500 and mind-train's last 300 impressions (when the curve has their scores), with each
adapter's LLM scores; every number is reported on the first 300 held-out impressions. The product's ranking is
the blend with the reader's weights from the learned ranker and the diversity term on top, scored by place, as
`newsrank eval --method ranker` scores it.

For each adapter: AUC (± standard error over impressions) of the LLM alone, of the hand-set blend with that LLM,
of the product with the learned ranker, and of the same ranker refitted without the LLM; the LLM's worth is the
paired difference of the last two (± its standard error). With `--tower` (benchmarks/tower.py), the LLM's match
of readers and articles is a signal too, and "without the LLM" removes both. For the largest adapter: the choice
of model (logistic regression with and without interactions, on P(Yes) or on its logit, and gradient-boosted
trees), an ablation (each signal removed and the ranker refitted), and the fit carried to all held-out
impressions, where popularity counts come from twice the traffic (`--brief`: the first table alone). `--ceiling`:
the ranker fitted on the held-out impressions themselves, the most any weights of these signals reach there.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config.settings import Settings
from core import metrics
from core.records import BlendWeights
from evaluation import replay
from feed import learned_ranker
from feed.blend import blend_rank, without
from llm.tower import Tower
from retrieval.embed import Embedder

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mind-dev"
WEEK = DATA.parent / "mind-train"
ADAPTER_PART = 500
RANKER_WEEK = 300  # mind-train's last impressions (by time): the ranker's share of the week
HAND_SET = BlendWeights()


def read_scores(*paths: Path) -> dict[str, list[float]]:
    """Scores by impression id, from every file of these that exists."""
    return {row["id"]: row["scores"] for path in paths if path.is_file()
            for row in map(json.loads, path.read_text().splitlines())}  # fmt: skip


def ranker_scores(folder: Path, size: int) -> dict[str, list[float]]:
    """An adapter's scores of the ranker's share: the tune part's, and the week's where the curve has them."""
    return read_scores(folder / f"ranker-{size}.jsonl", folder / f"ranker-week-{size}.jsonl")


def mean_se(values: np.ndarray) -> str:
    v = values[~np.isnan(values)]
    return f"{v.mean():.2f} ± {metrics.standard_error(v.tolist()):.2f}"


def paired(a: np.ndarray, b: np.ndarray) -> str:
    d = (a - b)[~np.isnan(a - b)]
    return f"{d.mean():+.2f} ± {metrics.standard_error(d.tolist()):.2f}"


def per_impression(contexts, scores_of) -> tuple[np.ndarray, np.ndarray]:
    """AUC and nDCG@10 (×100) of each impression; AUC NaN where it is undefined."""
    aucs, ndcgs = [], []
    for ctx in contexts:
        s = scores_of(ctx)
        value = metrics.auc(ctx.labels, s)
        aucs.append(np.nan if value is None else value)
        ndcgs.append(metrics.ndcg(ctx.labels, s, 10))
    return 100 * np.array(aucs), 100 * np.array(ndcgs)


def relevance_of(scores, ctx) -> list[float]:
    return scores[ctx.impression.id] if scores is not None else [0.0] * len(ctx.hits)


def removed(signals, drop: Sequence[str]):
    """The signals with those named in `drop` zeroed: the ranker fits them no weight."""
    zeroed = {name: 0.0 for name in drop if name in learned_ranker.FEATURES}
    return [replace(s, **zeroed) for s in signals] if zeroed else signals


def rows(evaluator, contexts, scores, drop: Sequence[str] = ()):
    """Every candidate's signals (those in `drop` zeroed), its reader's history size and its label."""
    signals, history, labels = [], [], []
    for ctx in contexts:
        found = removed(evaluator.signals(ctx, relevance_of(scores, ctx)), drop)
        signals += found
        history += [0 if "history" in drop else ctx.profile.engaged] * len(found)
        labels += ctx.labels
    return signals, history, labels


def fit(evaluator, contexts, scores, drop: Sequence[str] = ()) -> learned_ranker.Ranker:
    signals, history, labels = rows(evaluator, contexts, scores, drop)
    scorer = evaluator.scorer if scores is not None else None
    return learned_ranker.fit(signals, history, labels, [scores is not None] * len(labels), scorer)


def product(evaluator, fitted, contexts, scores, drop: Sequence[str] = ()):
    """The product's ranking: the blend with the reader's learned weights and diversity on top."""

    def scores_of(ctx):
        signals = removed(evaluator.signals(ctx, relevance_of(scores, ctx)), drop)
        history = 0 if "history" in drop else ctx.profile.engaged
        scorer = evaluator.scorer if scores is not None else None
        weights = BlendWeights(**fitted.weights(history, scorer, HAND_SET))
        return metrics.by_place(blend_rank(signals, ctx.embeddings, weights))

    return per_impression(contexts, scores_of)


def hand_set(evaluator, contexts, scores):
    """Today's blend: the hand-set weights (without the LLM: its weight shared out among the others)."""
    weights = HAND_SET if scores is not None else without(HAND_SET, "relevance")

    def scores_of(ctx):
        return metrics.by_place(blend_rank(evaluator.signals(ctx, relevance_of(scores, ctx)), ctx.embeddings, weights))

    return per_impression(contexts, scores_of)


def model_choice(evaluator, fit_part, fit_scores, heldout, held) -> list[str]:
    """P(click) models over the same signals, compared by the held-out AUC of their scores alone."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    def logit(s):
        return replace(s, relevance=(math.log(max(s.relevance, 1e-9) / max(1 - s.relevance, 1e-9)) + 20) / 40)

    signals, history, labels = rows(evaluator, fit_part, fit_scores)
    variants = {
        "logistic regression": (False, lambda s: s),
        "logistic regression + history interactions (shipped)": (True, lambda s: s),
        "the same on the LLM's logit instead of P(Yes)": (True, logit),
    }
    lines = []
    for name, (interactions, transform) in variants.items():
        model = learned_ranker.fit_columns([transform(s) for s in signals], history, labels, learned_ranker.FEATURES,
                                   interactions=interactions)  # fmt: skip

        def scores_of(ctx, model=model, transform=transform, interactions=interactions):
            found = [transform(s) for s in evaluator.signals(ctx, held[ctx.impression.id])]
            x = learned_ranker.matrix(found, [ctx.profile.engaged] * len(found), learned_ranker.FEATURES, interactions)
            return model.logits(x).tolist()

        auc, ndcg = per_impression(heldout, scores_of)
        lines.append(f"| {name} | {mean_se(auc)} | {np.nanmean(ndcg):.2f} |")
    trees = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, max_leaf_nodes=15, random_state=0)
    trees.fit(learned_ranker.matrix(signals, history, learned_ranker.FEATURES), labels)

    def tree_scores(ctx):
        found = evaluator.signals(ctx, held[ctx.impression.id])
        x = learned_ranker.matrix(found, [ctx.profile.engaged] * len(found), learned_ranker.FEATURES)
        return trees.predict_proba(x)[:, 1].tolist()

    auc, ndcg = per_impression(heldout, tree_scores)
    lines.append(f"| gradient-boosted trees (scikit-learn, same columns) | {mean_se(auc)} | {np.nanmean(ndcg):.2f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scores", default="data/llm-training/curve-listwise-8", help="llm_training.py curve's output")
    parser.add_argument("--plot", help="write the learning curve as a PNG here")
    parser.add_argument("--save", help="write the ranker fitted with the largest adapter here")
    parser.add_argument(
        "--without",
        nargs="+",
        default=[],
        choices=learned_ranker.FEATURES,
        metavar="SIGNAL",
        help="signals every ranker here is fitted without (weight 0): those the ablation left out",
    )
    parser.add_argument("--tower", help="a tower file (benchmarks/tower.py): the LLM's match as a signal")
    parser.add_argument("--brief", action="store_true", help="the first table alone")
    parser.add_argument("--ceiling", action="store_true", help="also the ranker fitted on the held-out part itself")
    args = parser.parse_args()
    without = tuple(args.without)
    match = Tower.load(Path(args.tower)) if args.tower else None
    reader = match.article_reader(Settings().model_cache) if match else None
    no_llm_drop = (*without, "match")  # without the LLM: neither its relevance nor its match
    folder = Path(args.scores)
    impressions, _ = replay.read_behaviors(DATA / "behaviors.tsv")
    corpus = replay.Corpus(DATA / "news.tsv", Embedder(), Path("data/eval-cache"), show_progress=False, reader=reader)
    tune = replay.select(impressions, "tune", 0, None)
    fit_part = list(replay.contexts(tune[ADAPTER_PART:], corpus))
    if any(folder.glob("ranker-week-*.jsonl")):  # the curve scored the week's ranker share too
        week, _ = replay.read_behaviors(WEEK / "behaviors.tsv")
        ordered = sorted(week, key=lambda i: (i.time or 0.0, i.id))[-RANKER_WEEK:]
        week_corpus = replay.Corpus(WEEK / "news.tsv", Embedder(), Path("data/eval-cache"), False, reader=reader)
        fit_part += list(replay.contexts(ordered, week_corpus))
    heldout = list(replay.contexts(replay.select(impressions, "heldout", 0, 300), corpus))
    heldout_all = list(replay.contexts(replay.select(impressions, "heldout", 0, None), corpus))
    sizes = sorted(int(p.stem.split("-")[1]) for p in folder.glob("heldout-*.jsonl"))
    evaluator = replay.Evaluator(None, HAND_SET, model="smollm2-135m", tower=match)

    no_llm = fit(evaluator, fit_part, None, no_llm_drop)
    no_llm_auc, no_llm_ndcg = product(evaluator, no_llm, heldout, None, no_llm_drop)
    hand_auc, hand_ndcg = hand_set(evaluator, heldout, None)
    print(f"fitted on {len(fit_part)} tune impressions; reported on the first {len(heldout)} held-out impressions\n")
    print(f"without an LLM: hand-set blend {mean_se(hand_auc)} (nDCG@10 {np.nanmean(hand_ndcg):.2f}), "
          f"learned ranker {mean_se(no_llm_auc)} (nDCG@10 {np.nanmean(no_llm_ndcg):.2f})\n")  # fmt: skip
    print("| adapter trained on | LLM alone | hand-set blend + LLM | **learned ranker + LLM** | nDCG@10 | "
          "the LLM's worth (paired, vs the ranker without it) |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|")
    curve = []
    for size in sizes:
        held = read_scores(folder / f"heldout-{size}.jsonl")
        fitted = fit(evaluator, fit_part, ranker_scores(folder, size), without)
        llm_auc, _ = per_impression(heldout, lambda ctx, held=held: held[ctx.impression.id])
        blend_auc, _ = hand_set(evaluator, heldout, held)
        auc, ndcg = product(evaluator, fitted, heldout, held, without)
        print(f"| {size:,} examples | {mean_se(llm_auc)} | {mean_se(blend_auc)} | **{mean_se(auc)}** | "
              f"{np.nanmean(ndcg):.2f} | {paired(auc, no_llm_auc)} |", flush=True)  # fmt: skip
        curve.append((size, llm_auc, auc))
    if sizes and args.ceiling:  # the weights fitted on the held-out impressions themselves: no ranker does better
        held = read_scores(folder / f"heldout-{sizes[-1]}.jsonl")
        oracle = fit(evaluator, heldout, held, without)
        auc, ndcg = product(evaluator, oracle, heldout, held, without)
        print(f"\nthe ceiling of these signals in the blend (weights fitted on the held-out impressions themselves): "
              f"{mean_se(auc)}, nDCG@10 {np.nanmean(ndcg):.2f}")  # fmt: skip
    if not sizes or args.brief:
        return
    size = sizes[-1]
    held = read_scores(folder / f"heldout-{size}.jsonl")
    fit_scores = ranker_scores(folder, size)
    fitted = fit(evaluator, fit_part, fit_scores, without)
    if args.save:
        fitted.save(Path(args.save))
        print(f"\nranker written to {args.save}")
    full, _ = product(evaluator, fitted, heldout, held, without)

    print(f"\nModel choice ({size:,}-example adapter; each model's P(click) alone, without the diversity term):\n")
    print("| model | held-out AUC | nDCG@10 |\n|---|---:|---:|")
    print("\n".join(model_choice(evaluator, fit_part, fit_scores, heldout, held)))

    print(f"\nAblation ({size:,}-example adapter): each signal removed and the ranker refitted\n")
    print("| removed | AUC | ΔAUC (paired) |\n|---|---:|---:|")
    for feature in (f for f in (*learned_ranker.FEATURES, "history") if f not in without):
        refit = fit(evaluator, fit_part, fit_scores, (*without, feature))
        auc, _ = product(evaluator, refit, heldout, held, (*without, feature))
        print(f"| {feature} | {mean_se(auc)} | {paired(auc, full)} |", flush=True)

    reader = learned_ranker.Ranker(fitted.with_llm, fitted.without_llm, evaluator.scorer)
    for items in (2, 10, 50):
        weights = reader.weights(items, evaluator.scorer, HAND_SET)
        print(f"\nweights for a reader with {items} history items: "
              + ", ".join(f"{n} {weights[n]:+.3f}" for n in learned_ranker.FEATURES))  # fmt: skip

    scored = [c for c in heldout_all if c.impression.id in held]
    all_auc, _ = product(evaluator, no_llm, heldout_all, None, no_llm_drop)
    print(f"\nthe LLM-free ranker on all {len(heldout_all)} held-out impressions (popularity from all of them): "
          f"{mean_se(all_auc)}, on the first 300: {mean_se(no_llm_auc)}; "
          f"{len(scored)} have LLM scores")  # fmt: skip

    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6.4, 4))
        xs = [c[0] for c in curve]
        for label, index in (("LLM alone", 1), ("learned ranker + LLM (the product)", 2)):
            means = [np.nanmean(c[index]) for c in curve]
            ses = [metrics.standard_error(c[index][~np.isnan(c[index])].tolist()) for c in curve]
            ax.errorbar(xs, means, yerr=ses, marker="o", capsize=3, label=label)
        ax.axhline(float(np.nanmean(no_llm_auc)), color="grey", linestyle="--", label="learned ranker, no LLM")
        ax.axhline(float(np.nanmean(hand_auc)), color="grey", linestyle=":", label="hand-set blend, no LLM")
        ax.set_xscale("log")
        ax.set_xlabel("training examples (tune part)")
        ax.set_ylabel("held-out AUC ×100")
        ax.set_title("MIND-dev: how far the LLM carries the ranking")
        ax.legend(fontsize=8)
        fig.tight_layout()
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.plot, dpi=120)
        print(f"plot written to {args.plot}")


if __name__ == "__main__":
    main()
