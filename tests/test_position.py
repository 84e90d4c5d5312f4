"""Learning without position bias: exploring feeds, estimating examination propensities, weighting clicks by them,
and a simulation where a ranker fitted with the weights ranks readers' true relevance better than one without."""

import json
import random
from dataclasses import replace

import numpy as np
import pytest

from core import metrics
from core.records import Signals
from feed import learned_ranker, position


def test_explore_puts_a_pair_in_play_in_a_share_of_feeds_and_swaps_half():
    rng = random.Random(0)
    plays = [position.explore(10, 0.15, rng) for _ in range(20_000)]
    pairs = [pair for pair, _ in plays if pair is not None]
    assert abs(len(pairs) / len(plays) - 0.15) < 0.01  # the standard error is 0.0025
    assert abs(np.mean([swap for pair, swap in plays if pair is not None]) - 0.5) < 0.04  # it is 0.009
    assert not any(swap for pair, swap in plays if pair is None)
    counts = np.bincount(pairs, minlength=10)[1:]  # pairs 1..9, each about 1/9 of them
    assert counts.min() > 0.8 * len(pairs) / 9 and counts.max() < 1.2 * len(pairs) / 9
    assert {position.explore(3, 1.0, rng)[0] for _ in range(200)} == {1, 2}  # a short feed: its own pairs
    assert max(position.explore(30, 1.0, rng)[0] for _ in range(500)) == 9  # never deeper than depth
    assert position.explore(1, 1.0, rng) == (None, False)  # nothing to swap


def test_swapped_exchanges_the_pair_only_when_the_coin_says_so():
    order = ["a", "b", "c", "d"]
    assert position.swapped(order, 2, True) == ["a", "c", "b", "d"]
    assert position.swapped(order, 1, True) == ["b", "a", "c", "d"]
    assert position.swapped(order, 3, False) == order
    assert position.swapped(order, None, False) == order
    assert order == ["a", "b", "c", "d"]  # not in place


def explored_feeds(examined: np.ndarray, feeds: int, seed: int, swap: bool = True) -> list[tuple[int, list[int], str]]:
    """Explored feeds under a position-based click model, each ranked best first by the current ranker:
    (the pair in play, the positions clicked, a reader of its own). `swap=False`: the pair is never swapped."""
    rng, coin = np.random.default_rng(seed), random.Random(seed)
    n = len(examined)
    relevance = -np.sort(-rng.uniform(0.1, 0.9, (feeds, n)), axis=1)
    plays = [position.explore(n, 1.0, coin) for _ in range(feeds)]
    shown = np.array([position.swapped(r, pair, s and swap) for r, (pair, s) in zip(relevance, plays, strict=True)])
    clicked = rng.random((feeds, n)) < examined * shown
    return [(pair, (np.flatnonzero(c) + 1).tolist(), f"r{n}")
            for n, ((pair, _), c) in enumerate(zip(plays, clicked, strict=True))]  # fmt: skip


def test_estimate_recovers_the_propensities_of_a_click_model():
    examined = 1 / np.arange(1, 11) ** 0.8
    estimated = position.estimate(explored_feeds(examined, 150_000, seed=0), 10)
    assert estimated.feeds == 150_000 and len(estimated.values) == 10
    # every position within 20 % of the truth: the chain's error grows with depth (measured over seeds 0-7: at
    # most 12 %, at 10 % for this seed; about 9 % is one standard error at position 10 with these click counts)
    assert np.allclose(estimated.values, examined, rtol=0.2), estimated.values
    # the coin is what makes it right: unswapped, the less relevant item at k+1 looks less examined than it is
    unswapped = position.estimate(explored_feeds(examined, 150_000, seed=0, swap=False), 10)
    assert unswapped.values[-1] < 0.8 * examined[-1], unswapped.values


def test_one_reader_cannot_set_the_propensities():
    """A reader who explores many feeds and clicks only the upper place of each pair weighs no more than their
    share: the honest readers' estimate stands."""
    examined = 1 / np.arange(1, 11) ** 0.8
    honest = [(pair, clicked, f"h{n % 400}") for n, (pair, clicked, _) in  # 400 readers, 50 feeds each
              enumerate(explored_feeds(examined, 20_000, seed=1))]  # fmt: skip
    forged = [(pair, [pair], "attacker") for pair in range(1, 10) for _ in range(300)]  # 2,700 feeds, one reader
    fair = position.estimate(honest, 10, reader_share=0.01)
    attacked = position.estimate(honest + forged, 10, reader_share=0.01)
    unbounded = position.estimate(honest + forged, 10)
    assert np.allclose(attacked.values, fair.values, rtol=0.15), attacked.values
    assert np.allclose(fair.values, position.estimate(honest, 10).values, rtol=0.1)  # honest readers: near as they were
    assert unbounded.values[-1] < 0.05 * fair.values[-1]  # without it, one reader sets the deep places


def test_estimate_smooths_chains_caps_and_round_trips():
    assert position.estimate([], 4).values == (1.0, 1.0, 1.0, 1.0)  # no data: every position like the top
    # pair 1 seen with 3 clicks on top and 1 below; pair 2 never explored; pair 3 with clicks only below
    observations = [(1, [1], "a"), (1, [1, 2], "b"), (1, [1], "c"), (3, [4], "d"), (3, [4], "e"), (7, [7], "f"),
                    (0, [1], "g")]  # fmt: skip
    estimated = position.estimate(observations, 4)
    ratio = 1.5 / 3.5
    assert estimated.values == pytest.approx((1.0, ratio, ratio, 1.0))  # 3 → 4 more clicked: capped at 1
    assert estimated.feeds == 5  # the pairs outside 1..3 are ignored
    assert estimated.at(1) == 1.0 and estimated.at(2) == pytest.approx(ratio) and estimated.at(40) == 1.0
    with pytest.raises(ValueError):
        estimated.at(0)
    assert position.Propensities.from_dict(json.loads(json.dumps(estimated.to_dict()))) == estimated


def test_ips_weights_weigh_clicks_by_inverse_propensity_clipped():
    propensities = position.Propensities((1.0, 0.5, 0.2, 0.05), feeds=100)
    assert position.ips_weights([1, 2, 3, 4, 2], [1, 1, 1, 1, 0], propensities) == pytest.approx([1, 2, 5, 10, 1])
    assert position.ips_weights([4, 9], [1, 1], propensities, clip=0.25) == pytest.approx([4, 4])


def test_sample_weights_count_as_repeated_rows_and_ones_change_nothing():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(300, 3)), rng.integers(0, 2, 300)
    twice = np.repeat(np.arange(300), np.where(np.arange(300) % 3 == 0, 2, 1))
    weighted = metrics.fit_logistic(x, y, weights=np.where(np.arange(300) % 3 == 0, 2.0, 1.0))
    assert weighted == pytest.approx(metrics.fit_logistic(x[twice], y[twice]))
    assert (metrics.fit_logistic(x, y, weights=np.ones(300)) == metrics.fit_logistic(x, y)).all()
    impressions = [learned_ranker.Impression(str(i), tuple(Signals(*rng.random(7)) for _ in range(5)),
                                     tuple(int(v) for v in rng.integers(0, 2, 5)), 10, True) for i in range(50)]  # fmt: skip
    ones = [replace(i, weights=(1.0,) * 5) for i in impressions]
    assert learned_ranker.fit_impressions(ones, "s") == learned_ranker.fit_impressions(impressions, "s")


# -- the simulation: readers who click by position as much as by relevance ----------------------------------------
# Each candidate has a similarity, an affinity and a popularity, from which its true relevance to the reader
# follows; popularity tells little. The current ranker leans on popularity far more than it should, and readers
# examine position k with probability 1/k, so popular items collect clicks by being on top. 20 % of the feeds are
# explored (one neighbouring pair put in play, swapped on a coin); the propensities are estimated from those.
POSITIONS = 10
EXAMINED = 1 / np.arange(1, POSITIONS + 1)
# a candidate: (similarity, affinity, popularity)
TRUE_WEIGHTS, TRUE_BIAS = np.array([3.0, 2.0, 0.5]), -3.0
LOGGING_WEIGHTS = np.array([1.0, 0.5, 3.0])  # the current ranker: popularity first
FEEDS, SHARE = 10_000, 0.2


def true_relevance(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-(TRUE_BIAS + x @ TRUE_WEIGHTS)))


def signals(rows: np.ndarray) -> tuple[Signals, ...]:
    return tuple(Signals(similarity=s, affinity=a, popularity=p) for s, a, p in rows.tolist())


def logged(seed: int) -> tuple[list[learned_ranker.Impression], position.Propensities]:
    """A platform's logged feeds (as shown, with clicks) and the propensities estimated from the explored ones."""
    rng, coin = np.random.default_rng(seed), random.Random(seed)
    x = rng.random((FEEDS, POSITIONS, 3))
    ranked = np.argsort(-(x @ LOGGING_WEIGHTS + rng.normal(0, 0.5, (FEEDS, POSITIONS))), axis=1)
    plays = [position.explore(POSITIONS, SHARE, coin) for _ in range(FEEDS)]
    order = np.array([position.swapped(o, pair, swap) for o, (pair, swap) in zip(ranked, plays, strict=True)])
    shown = np.take_along_axis(x, order[:, :, None], axis=1)
    clicks = (rng.random((FEEDS, POSITIONS)) < EXAMINED * true_relevance(shown)).astype(int)
    history = rng.integers(1, 60, FEEDS)
    explored = [(pair, (np.flatnonzero(c) + 1).tolist(), f"reader{n}")
                for n, ((pair, _), c) in enumerate(zip(plays, clicks, strict=True)) if pair]  # fmt: skip
    propensities = position.estimate(explored, POSITIONS)
    impressions = [
        learned_ranker.Impression(f"reader{i}", signals(s), tuple(c.tolist()), int(h), scored=False)
        for i, (s, c, h) in enumerate(zip(shown, clicks, history, strict=True))
    ]
    return impressions, propensities


def ordered_as_truly_relevant(fit: learned_ranker.Fit, seed: int, sets: int = 300, n: int = 20) -> float:
    """On fresh candidate sets: the share of candidate pairs the fit orders as their true relevance does (0.5 at
    random, 1 perfect)."""
    rng = np.random.default_rng(10_000 + seed)
    x = rng.random((sets, n, 3))
    history = np.repeat(rng.integers(1, 60, sets), n).tolist()
    names = [c for c in fit.columns if "*" not in c]
    scores = fit.logits(learned_ranker.matrix(signals(x.reshape(-1, 3)), history, names)).reshape(sets, n)
    relevance = true_relevance(x)
    i, j = np.triu_indices(n, 1)
    return float(np.mean(np.sign(scores[:, i] - scores[:, j]) == np.sign(relevance[:, i] - relevance[:, j])))


def test_weighting_clicks_by_estimated_propensity_learns_what_readers_want_not_the_old_ranking():
    # measured (seeds 0-4), share of pairs ordered as true relevance: unweighted 0.791 0.792 0.800 0.791 0.796
    # (mean 0.794): it learns the logged ranking's taste for popularity back; weighted 0.910 0.938 0.958 0.950
    # 0.938 (mean 0.939); with the true propensities instead of estimated ones, 0.941. About 10 s.
    unweighted, weighted = [], []
    for seed in range(5):
        impressions, propensities = logged(seed)
        shown = range(1, POSITIONS + 1)
        with_weights = [
            replace(i, weights=tuple(position.ips_weights(shown, i.labels, propensities))) for i in impressions
        ]
        unweighted.append(
            ordered_as_truly_relevant(learned_ranker.fit_impressions(impressions, None).without_llm, seed)
        )
        weighted.append(ordered_as_truly_relevant(learned_ranker.fit_impressions(with_weights, None).without_llm, seed))
    gains = np.subtract(weighted, unweighted)
    assert gains.mean() > 0.08, (unweighted, weighted)
    assert (gains > 0.02).sum() >= 4, (unweighted, weighted)


# -- on real parts: the feed explores, the store keeps what it did, training reads the weights back -------------
def test_a_feed_explores_a_pair_of_places_and_its_record_says_which(corpus_store, feedback, settings):
    from core.records import Event
    from feed.recommender import FeedRequest, Recommender
    from llm.backends.fake import FakeBackend
    from tests.conftest import NOW

    feedback.add_events([Event("u", "s1", "click", NOW - 60)])
    exploring = settings.model_copy(update={"position_explore_share": 1.0, "position_explore_depth": 4})
    recommender = Recommender(corpus_store, feedback, FakeBackend(), exploring, clock=lambda: NOW)
    recommender.random = random.Random(3)
    standings = recommender.rank(FeedRequest("u", k=6, explain=False))
    blended = [standings.hits[p.index].article.id for p in standings.placed]
    outcomes = set()
    for _ in range(12):
        feed = recommender.recommend(FeedRequest("u", k=6, explain=False))
        record = feedback.ranking(feed.ranking_id)
        shown = [i.article_id for i in record.items]
        assert 1 <= record.explored_pair <= 3 and [i.position for i in record.items] == list(range(1, 7))
        swapped = shown != blended
        assert shown == position.swapped(blended, record.explored_pair, swapped)
        outcomes.add(swapped)
    assert outcomes == {True, False}  # both sides of the coin are logged
    plain = Recommender(corpus_store, feedback, FakeBackend(), settings, clock=lambda: NOW)
    assert feedback.ranking(plain.recommend(FeedRequest("u", k=6)).ranking_id).explored_pair is None


def test_training_reads_propensities_from_the_stores_explored_feeds_and_weighs_clicks(feedback):
    """Feeds logged in a real store under a click model: the propensities come back from the explored ones, and
    the ranker's impressions and the adapter's examples weigh each click by the place it was shown at."""
    from core.records import Event, RankedItem, RankingRecord
    from tests.conftest import NOW

    rng = random.Random(0)
    examined = [1.0 / k for k in range(1, 6)]
    events, observed = [], []
    for n in range(1500):
        pair = rng.randint(1, 4) if n % 2 else None
        items = tuple(RankedItem(p, f"a{p}", f"A{p}", 0.5, {"similarity": 0.5}, 1.0) for p in range(1, 6))
        feedback.record_ranking(RankingRecord(f"r{n}", f"u{n % 50}", NOW + n, "pointwise", "v", "fake", "m", None,
                                              {}, "profile", False, items, explored_pair=pair))  # fmt: skip
        # every item equally relevant (0.6): what differs between places is only how often they are looked at
        clicked = [p for p in range(1, 6) if rng.random() < examined[p - 1] * 0.6]
        events += [Event(f"u{n % 50}", f"a{p}", "click", NOW + n + 1, ranking_id=f"r{n}") for p in clicked]
        events += [Event(f"u{n % 50}", "a1", "click", NOW + n + 2)] if n % 7 == 0 else []  # names no feed: not counted
        observed += [(pair, clicked, f"u{n % 50}")] if pair else []
    feedback.add_events(events)
    estimated = position.from_store(feedback, NOW - 1, NOW + 10_000, 5)
    assert estimated == position.estimate(observed, 5) and estimated.feeds == 750
    assert estimated.values[0] == 1.0 > estimated.values[1] > estimated.values[4]  # the top is looked at most
    impressions, _ = learned_ranker.from_feedback(feedback, NOW - 1, estimated)
    for k in range(1, 6):  # each click weighs 1 / the propensity of its place; a place not clicked weighs 1
        weights = {i.weights[k - 1] for i in impressions if i.labels[k - 1]}
        assert weights == {1 / max(estimated.at(k), 0.1)}
    assert all(w == 1.0 for i in impressions for label, w in zip(i.labels, i.weights, strict=True) if not label)
    assert learned_ranker.from_feedback(feedback, NOW - 1)[0][0].weights is None  # without propensities: raw clicks
