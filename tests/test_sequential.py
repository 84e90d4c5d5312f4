"""The always-valid test that decides an automatic A/B (evaluation/sequential.py), on simulated outcomes."""

import math
import random

import pytest

from evaluation import sequential


def feeds(rng: random.Random, n: int, ctr: float, harm: float = 0.02) -> list[tuple[tuple[float, float], ...]]:
    """Per feed of 10 items: (clicked, shown) and (harmful events, shown)."""
    return [((sum(rng.random() < ctr for _ in range(10)), 10.0), (sum(rng.random() < harm for _ in range(10)), 10.0))
            for _ in range(n)]  # fmt: skip


def run(rng: random.Random, treated_ctr: float, control_ctr: float, looks: int = 60, step: int = 40,
        treated_harm: float = 0.02) -> sequential.Decision:  # fmt: skip
    """One experiment looked at `looks` times, `step` more feeds an arm each time; its first verdict."""
    treated: list = []
    control: list = []
    for _ in range(looks):
        treated += feeds(rng, step, treated_ctr, treated_harm)
        control += feeds(rng, step, control_ctr)
        decision = sequential.decide(
            sequential.Arm([m for m, _ in treated], [g for _, g in treated]),
            sequential.Arm([m for m, _ in control], [g for _, g in control]),
            max_feeds=looks * step,
        )
        if decision.verdict != "continue":
            return decision
    return decision


def test_with_no_true_difference_at_most_five_percent_of_experiments_promote_however_often_looked_at():
    rng = random.Random(0)
    verdicts = [run(rng, 0.1, 0.1).verdict for _ in range(200)]
    promoted = verdicts.count("promote") / len(verdicts)
    assert promoted <= 0.05, promoted
    assert verdicts.count("rollback") >= 190  # undecided at the horizon: what is not shown better is not kept


def test_a_better_arm_is_promoted_and_a_worse_one_rolled_back():
    rng = random.Random(1)
    assert [run(rng, 0.14, 0.10).verdict for _ in range(20)].count("promote") >= 18
    worse = [run(rng, 0.07, 0.10) for _ in range(20)]
    assert [d.verdict for d in worse].count("rollback") == 20
    assert all(d.reason == "worse, significantly" for d in worse)


def test_a_harmful_arm_is_stopped_by_its_guardrail_early():
    rng = random.Random(2)
    decision = run(rng, 0.10, 0.10, treated_harm=0.08)
    assert decision.verdict == "rollback" and decision.reason == "the guardrail rose significantly"
    assert decision.feeds[0] < 60 * 40 / 4  # well before the horizon


def test_the_mixture_ratio_by_hand():
    assert sequential.mixture_ratio(0.0, 1e-4, 4e-4) == pytest.approx(math.sqrt(1e-4 / 5e-4))
    value = sequential.mixture_ratio(0.05, 1e-4, 4e-4)
    assert value == pytest.approx(math.sqrt(0.2) * math.exp(0.0025 * 4e-4 / (2 * 1e-4 * 5e-4)))
    assert sequential.mixture_ratio(0.3, float("inf"), 4e-4) == 1.0
