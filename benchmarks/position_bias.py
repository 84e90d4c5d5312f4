"""Learning without position bias, in the simulation of tests/test_position.py: how well a ranker fitted on raw
clicks and one fitted with inverse-propensity weights order readers' true relevance, and what the held-out gates
say of the two.

    .venv/bin/python benchmarks/position_bias.py [--seeds 5]

Per seed: 10,000 logged feeds, 20 % explored; both rankers fitted on the first 8,000 (weights from the
propensities estimated on the explored feeds, and, for comparison, from the true ones) and judged (1) on fresh
candidate sets against the true relevance, (2) by the gate's held-out AUC on the other 2,000 on raw clicks, (3)
the same with each click weighted by 1/propensity, (4) on the explored pairs with one click only.
"""

from __future__ import annotations

import argparse
import random
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the simulation lives beside its test

from core.records import BlendWeights
from feed import learned_ranker, position
from tests import test_position as sim

TRAIN = 8000


def logged_with_plays(seed: int):
    """The simulation's logs again, with what each feed showed and which pair it explored."""
    rng, coin = np.random.default_rng(seed), random.Random(seed)
    x = rng.random((sim.FEEDS, sim.POSITIONS, 3))
    ranked = np.argsort(-(x @ sim.LOGGING_WEIGHTS + rng.normal(0, 0.5, (sim.FEEDS, sim.POSITIONS))), axis=1)
    plays = [position.explore(sim.POSITIONS, sim.SHARE, coin) for _ in range(sim.FEEDS)]
    order = np.array([position.swapped(o, pair, swap) for o, (pair, swap) in zip(ranked, plays, strict=True)])
    shown = np.take_along_axis(x, order[:, :, None], axis=1)
    clicks = (rng.random((sim.FEEDS, sim.POSITIONS)) < sim.EXAMINED * sim.true_relevance(shown)).astype(int)
    return shown, clicks, plays


def gate_auc(impressions, fit: learned_ranker.Ranker, weighted: bool) -> float:
    hand = dict(BlendWeights())
    values = []
    for i in impressions:
        scores = learned_ranker.ranked_by(i, fit.weights(i.history, None, hand))
        y = np.asarray(i.labels, dtype=bool)
        if y.all() or not y.any():
            continue
        w = np.asarray(i.weights if weighted else [1.0] * len(y))
        s = np.asarray(scores)
        pairs = w[y][:, None] * w[~y][None, :]
        won = (s[y][:, None] > s[~y][None, :]) + 0.5 * (s[y][:, None] == s[~y][None, :])
        values.append((pairs * won).sum() / pairs.sum())
    return 100 * float(np.mean(values))


def swap_gate(fit: learned_ranker.Ranker, seed: int, impressions) -> tuple[float, int]:
    shown, clicks, plays = logged_with_plays(seed)
    names = [c for c in fit.without_llm.columns if "*" not in c]
    won = n = 0
    for f in range(TRAIN, sim.FEEDS):
        pair, _ = plays[f]
        if not pair or clicks[f, pair - 1] == clicks[f, pair]:
            continue
        rows = learned_ranker.matrix(sim.signals(shown[f, pair - 1 : pair + 1]), [impressions[f].history] * 2, names)
        scores = fit.without_llm.logits(rows)
        won += (scores[0] > scores[1]) == bool(clicks[f, pair - 1])
        n += 1
    return won / max(n, 1), n


def weighted_by(impressions, propensities: position.Propensities):
    places = range(1, sim.POSITIONS + 1)
    return [replace(i, weights=tuple(position.ips_weights(places, i.labels, propensities))) for i in impressions]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    print(
        "| seed | true order: raw | weighted | weighted (true p) | gate: raw | weighted | gate, 1/p clicks: raw |"
        " weighted | explored pairs: raw | weighted | pairs |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for seed in range(args.seeds):
        impressions, estimated = sim.logged(seed)
        exact = position.Propensities(tuple(sim.EXAMINED.tolist()), estimated.feeds)
        est, true = weighted_by(impressions, estimated), weighted_by(impressions, exact)
        raw_fit = learned_ranker.fit_impressions(impressions[:TRAIN], None)
        fit = learned_ranker.fit_impressions(est[:TRAIN], None)
        true_fit = learned_ranker.fit_impressions(true[:TRAIN], None)
        order = [sim.ordered_as_truly_relevant(f.without_llm, seed) for f in (raw_fit, fit, true_fit)]
        held = est[TRAIN:]
        gates = [gate_auc(held, f, weighted) for weighted in (False, True) for f in (raw_fit, fit)]
        (raw_pairs, n), (pairs, _) = swap_gate(raw_fit, seed, impressions), swap_gate(fit, seed, impressions)
        print(f"| {seed} | " + " | ".join(f"{v:.3f}" for v in order) + " | "
              + " | ".join(f"{g:.1f}" for g in gates) + f" | {raw_pairs:.2f} | {pairs:.2f} | {n} |")  # fmt: skip


if __name__ == "__main__":
    main()
