"""An always-valid test of a treatment arm against the control, to be looked at as often as one likes.

The fixed-horizon intervals of evaluation/stats.py promise 95 % coverage at one look decided in advance; a loop
that checks every few minutes and stops at the first significant difference would promote a no-better arm far
more often than 5 %. The mixture sequential probability ratio test (mSPRT; Robbins 1970, Johari et al. 2017)
does not: with θ̂ the difference of the arms' means per feed and v its variance (the delta method over feeds,
as in stats.ratio), and a normal mixing distribution of variance τ² over the alternatives,

    Λ = sqrt(v / (v + τ²)) · exp(θ̂² τ² / (2 v (v + τ²)))

is a test martingale under "no difference" (to the normal approximation of θ̂), so P(Λ ever ≥ 1/α) ≤ α whenever
and however often it is looked at. A decision is taken when Λ ≥ 1/α: promote if θ̂ > 0, roll back if θ̂ < 0.
A guardrail metric (a harm: dislikes, low ratings, skips per item) is tested the same way, and its significant
rise stops the arm at once. An arm that reaches `max_feeds` undecided is rolled back: what is not shown to be
better is not served to everyone.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

from evaluation.stats import ratio

Verdict = Literal["continue", "promote", "rollback"]


@dataclass(frozen=True)
class Arm:
    """What the test reads of one arm: per feed, the metric's numerator and denominator (clicked items and items
    shown, for CTR), and the guardrail's."""

    metric: list[tuple[float, float]]
    guardrail: list[tuple[float, float]]


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str
    difference: float | None  # treatment minus control, of the metric
    statistic: float  # Λ of the metric's test (1/α decides)
    guardrail_difference: float | None
    guardrail_statistic: float
    feeds: tuple[int, int]  # treatment, control

    def as_dict(self) -> dict:
        return asdict(self)


def mixture_ratio(difference: float, variance: float, tau2: float) -> float:
    """Λ of the normal-mixture SPRT for an estimate `difference` of variance `variance` (1 when it says nothing)."""
    if not variance > 0 or math.isinf(variance):
        return 1.0
    exponent = difference**2 * tau2 / (2 * variance * (variance + tau2))
    return math.sqrt(variance / (variance + tau2)) * math.exp(min(exponent, 700.0))


def compare(treated: list[tuple[float, float]], control: list[tuple[float, float]]) -> tuple[float | None, float]:
    """The difference of two arms' ratios (treatment minus control) and its variance."""
    a, se_a, _ = ratio(treated)
    b, se_b, _ = ratio(control)
    if a is None or b is None:
        return None, math.inf
    return a - b, se_a**2 + se_b**2


def decide(
    treatment: Arm,
    control: Arm,
    alpha: float = 0.05,
    tau: float = 0.02,
    min_feeds: int = 50,
    max_feeds: int = 20_000,
) -> Decision:
    """The test's verdict now. `tau`: the mixing distribution's standard deviation, the size of difference the
    test is most ready to see (0.02: two clicks more per hundred items). No verdict before `min_feeds` per arm
    (the normal approximation needs some)."""
    diff, var = compare(treatment.metric, control.metric)
    harm, harm_var = compare(treatment.guardrail, control.guardrail)
    stat = mixture_ratio(diff or 0.0, var, tau**2)
    harm_stat = mixture_ratio(harm or 0.0, harm_var, tau**2)
    feeds = (len(treatment.metric), len(control.metric))

    def verdict(v: Verdict, reason: str) -> Decision:
        return Decision(v, reason, diff, stat, harm, harm_stat, feeds)

    if min(feeds) < min_feeds:
        return verdict("continue", f"fewer than {min_feeds} feeds in an arm")
    if harm is not None and harm > 0 and harm_stat >= 1 / alpha:
        return verdict("rollback", "the guardrail rose significantly")
    if diff is not None and stat >= 1 / alpha:
        return verdict("promote", "better, significantly") if diff > 0 else verdict("rollback", "worse, significantly")
    if min(feeds) >= max_feeds:
        return verdict("rollback", f"no significant difference after {max_feeds} feeds an arm")
    return verdict("continue", "no significant difference yet")
