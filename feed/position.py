"""Learning from clicks without position bias: explore a little, estimate how much each position is looked at,
and weight the clicks by it.

Readers click mostly near the top: P(click) = p_k × r (a position-based click model), p_k how likely position k
is examined and r how relevant the item is to the reader. A ranker fitted on logged clicks so learns its own
past ranking back. A small share of feeds is explored: in one, positions k and k+1 are put in play
and swapped on a coin, so the two items there are exchangeable and clicks at k+1 over clicks at k estimate
p_{k+1} / p_k. Chained from the top, they give each position's propensity relative to position 1.

Weighting: a clicked candidate at position k weighs 1 / max(p_k, clip), an unclicked one 1. A click then counts
as if its position had been examined as often as the top: an item's expected weighted clicks are r wherever it
was shown. Unclicked candidates keep weight 1, which leaves a pull towards well-placed items (their expected
weight is 1 - E[p] r rather than 1 - r), small where clicks are rare. The unbiased pointwise form (a click also
counts as a non-click of weight 1 - 1/p) removes that pull, and ranked better in the simulation of
tests/test_position.py (0.956 of candidate pairs in true order against 0.923, seeds 0-9), but it needs a second
row per click, which one weight per candidate cannot carry, and its intercept has no finite optimum once the
weighted clicks outnumber the candidates (a small fit, or low estimated propensities, reach that). The simple
form is a plain weighted fit: positive weights, convex, always converging, each weight at most 1 / clip.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from core import metrics
from core.records import FeedOutcome
from core.stores import FeedbackStore

SMOOTHING = 0.5  # added to each click count, so a pair with few clicks gives neither 0 nor infinity
MIN_FEEDS = 200  # explored feeds below which propensities are too noisy to weight training by


def explore(n: int, share: float, rng: random.Random, depth: int = 10) -> tuple[int | None, bool]:
    """For a feed of n items: the pair put in play (positions k and k+1, 1-based, k uniform in 1..min(n, depth)-1)
    in a `share` of feeds, else None; and whether to swap it (a fair coin)."""
    last = min(n, depth) - 1
    if last < 1 or rng.random() >= share:
        return None, False
    return rng.randint(1, last), rng.random() < 0.5


def swapped(order: Sequence, pair: int | None, swap: bool) -> list:
    """The order with positions `pair` and `pair` + 1 (1-based) exchanged when `swap`."""
    out = list(order)
    if pair is not None and swap:
        out[pair - 1], out[pair] = out[pair], out[pair - 1]
    return out


@dataclass(frozen=True)
class Propensities:
    """How likely each position is examined, relative to the top (values[0] is position 1, always 1)."""

    values: tuple[float, ...]
    feeds: int  # the explored feeds they were estimated from

    def at(self, position: int) -> float:
        """The propensity of a 1-based position; one deeper than estimated has the last one's."""
        if position < 1:
            raise ValueError(f"positions start at 1, not {position}")
        return self.values[min(position, len(self.values)) - 1] if self.values else 1.0

    def to_dict(self) -> dict:
        return {"values": list(self.values), "feeds": self.feeds}

    @classmethod
    def from_dict(cls, raw: dict) -> Propensities:
        return cls(tuple(float(v) for v in raw["values"]), int(raw["feeds"]))


# How often each place is looked at until explored feeds say: the 1/k of position-based click models of web search.
# The click-through rate weighs a showing by it (`examined`); in the simulation's offline bound the rate gained as
# much with 1/k^0.5 or 1/k^1.2 (docs/BENCHMARKS.md), so the guess need not be exact.
PRIOR = Propensities(tuple(1.0 / k for k in range(1, 51)), 0)


def examined(places: Mapping[int, int], propensities: Propensities = PRIOR) -> float:
    """How many readers likely looked at an article: the readers shown it at each place (1-based), each counted by
    how often that place is looked at. A reader shown it tenth is a tenth of one shown it first, not a whole
    reader who passed it over."""
    return sum(n * propensities.at(place) for place, n in places.items())


def estimate(
    observations: Iterable[tuple[int, Sequence[int], str]], positions: int, reader_share: float = 1.0
) -> Propensities:
    """Propensities of positions 1..`positions` from explored feeds, each (its explored pair k, the 1-based
    positions clicked in it, its reader): p_{k+1} / p_k = clicks at k+1 / clicks at k over the feeds that explored
    k (each count plus SMOOTHING), chained from p_1 = 1 and capped at 1. A pair no feed explored has ratio 1, so
    the positions below it keep the last estimated value. Pairs outside 1..positions-1 are ignored. Of each
    pair's clicks at k (and at k+1), no reader's weigh more than `reader_share` (core.metrics.capped_weights):
    one reader who explores many feeds and clicks as they please moves each ratio, and so the chain, by no more
    than that share."""
    readers = [[[], []] for _ in range(positions - 1)]  # per pair k (index k-1): who clicked at k, who at k+1
    feeds = 0
    for pair, clicked, reader in observations:
        if not 1 <= pair < positions:
            continue
        feeds += 1
        for side, place in enumerate((pair, pair + 1)):
            if place in clicked:
                readers[pair - 1][side].append(reader)
    clicks = [[sum(metrics.capped_weights(who, reader_share)) for who in pair] for pair in readers]
    chain = [1.0]
    for upper, lower in clicks:
        chain.append(chain[-1] * (lower + SMOOTHING) / (upper + SMOOTHING))
    return Propensities(tuple(min(p, 1.0) for p in chain[:positions]), feeds)


def from_store(
    feedback: FeedbackStore, since: float, until: float, positions: int, reader_share: float = 1.0
) -> Propensities:
    """Propensities from the explored feeds made in [since, until) and the clicks that name them."""
    return estimate(explored(feedback.feed_outcomes(since, until)), positions, reader_share)


def explored(outcomes: Iterable[FeedOutcome]) -> list[tuple[int, list[int], str]]:
    """What `estimate` reads of feeds: each explored one's pair, the positions clicked in it and its reader."""
    return [(o.explored_pair, [p for p, _ in o.clicked], o.user_id) for o in outcomes if o.explored_pair]


def ips_weights(
    positions: Sequence[int], labels: Sequence[int], propensities: Propensities, clip: float = 0.1
) -> list[float]:
    """Each candidate's weight in a fit: 1 / max(p_k, clip) when clicked at position k, 1 when not."""
    return [1.0 / max(propensities.at(k), clip) if label else 1.0 for k, label in zip(positions, labels, strict=True)]


def for_training(
    feedback: FeedbackStore, since: float, until: float, positions: int, off: bool = False, reader_share: float = 1.0
) -> tuple[Propensities | None, str]:
    """The propensities training weighs clicks by (estimated from the explored feeds since `since`), and a line
    that says what was done: None when turned off, or when too few feeds were explored to estimate them."""
    if off:
        return None, "position bias: not corrected (--no-position-weights)"
    estimated = from_store(feedback, since, until, positions, reader_share)
    if estimated.feeds < MIN_FEEDS:
        return None, (f"position bias: not corrected, {estimated.feeds} explored feeds (at least {MIN_FEEDS} "
                      "needed; NEWSRANK_POSITION_EXPLORE_SHARE explores a share of feeds)")  # fmt: skip
    shown = " ".join(f"{p:.2f}" for p in estimated.values)
    return estimated, f"position bias: clicks weighted by 1/propensity, from {estimated.feeds} explored feeds: {shown}"
