"""The operator's metrics (evaluation/stats.py): the ratio estimates, their intervals, the series and the differences."""

import random

import numpy as np
import pytest

from core.errors import InvalidInput
from core.records import FeedOutcome
from evaluation import stats
from tests.conftest import NOW


def outcome(at: float, arm: str | None, shown: int = 10, clicked=(), ratings=(), **more) -> FeedOutcome:
    return FeedOutcome(f"r{at}{arm}{random.random()}", at, arm, shown, more.pop("categories", 3), 0.5,
                       more.pop("age", 5.0) * shown, tuple(clicked), ratings=tuple(ratings), **more)  # fmt: skip


def test_a_mean_over_feeds_has_the_textbook_interval_and_a_ratio_the_delta_methods():
    rng = np.random.default_rng(0)
    values = rng.normal(3.0, 1.0, 50)
    mean, se, n = stats.ratio([(v, 1.0) for v in values])
    assert n == 50 and mean == pytest.approx(values.mean()) and se == pytest.approx(values.std(ddof=1) / np.sqrt(50))
    shown = rng.integers(1, 20, 200).astype(float)
    clicks = rng.binomial(shown.astype(int), 0.1).astype(float)
    r, se, n = stats.ratio(list(zip(clicks, shown, strict=True)))
    assert r == pytest.approx(clicks.sum() / shown.sum())
    # the delta method against the bootstrap over feeds
    boot = [(clicks[i].sum() / shown[i].sum()) for i in (rng.integers(0, 200, 200) for _ in range(2000))]
    assert se == pytest.approx(np.std(boot), rel=0.15)
    assert stats.ratio([(1.0, 0.0)]) == (None, float("inf"), 0)  # nothing to divide by: no estimate


def test_the_95_percent_interval_covers_the_truth_about_95_percent_of_the_time():
    rng = random.Random(1)
    covered = 0
    for _ in range(400):
        feeds = [outcome(NOW, "a", clicked=[(p, 1.0) for p in range(1, 11) if rng.random() < 0.12])
                 for _ in range(60)]  # fmt: skip
        e = stats.estimate(stats.BY_NAME["ctr"], feeds)
        covered += e.low <= 0.12 <= e.high
    assert 0.92 <= covered / 400 <= 0.98


def test_series_per_day_and_arm_and_each_arms_difference_from_the_control():
    day = 86400
    feeds = [outcome(NOW + d * day + 60 * i, arm, clicked=[(1, 2.0)] * (arm == "treatment" or i % 2), ratings=(4,))
             for d in range(2) for arm in ("control", "treatment") for i in range(10)]  # fmt: skip
    report = stats.summarise(feeds, "day", by_arm=True, control="control")
    assert [(s["arm"], s["feeds"]) for s in report["series"]] == [("control", 10), ("treatment", 10)] * 2
    assert report["total"]["treatment"]["feed_ctr"]["value"] == 1.0
    assert report["total"]["control"]["feed_ctr"]["value"] == 0.5
    diff = report["differences"]["treatment"]["feed_ctr"]
    assert diff["value"] == pytest.approx(0.5) and diff["low"] > 0  # the treatment's lift is significant
    assert report["differences"]["treatment"]["rating"]["value"] == 0.0
    assert report["total"]["control"]["click_position"]["value"] == 1.0
    assert report["total"]["control"]["age_shown_hours"]["value"] == pytest.approx(5.0)
    pooled = stats.summarise(feeds, "hour")
    assert set(pooled["total"]) == {"all"} and not pooled["differences"] and len(pooled["series"]) == 2
    assert "treatment - control" in stats.table(report) and "feed_ctr" in stats.table(report)
    with pytest.raises(InvalidInput, match="unknown metrics"):
        stats.summarise(feeds, metrics=["clicks"])
    with pytest.raises(InvalidInput, match="unknown bucket"):
        stats.summarise(feeds, "week")


def test_shares_have_intervals_inside_zero_and_one_that_still_cover_the_truth():
    """Wilson's interval for proportions: a feed CTR of 0.95 over 20 feeds, a share of high ratings from three
    ratings, never leave [0, 1]; and over many runs near the edge the interval still covers the truth."""
    near_one = [outcome(NOW, "a", clicked=[(1, 1.0)] * (i != 0)) for i in range(20)]
    e = stats.estimate(stats.BY_NAME["feed_ctr"], near_one)
    assert e.value == 0.95 and 0.7 < e.low < 0.95 < e.high <= 1.0
    few = [outcome(NOW, "a", ratings=(5,)), outcome(NOW, "a", ratings=(4, 1))]
    high = stats.estimate(stats.BY_NAME["rating_high"], few)
    assert high.value == pytest.approx(2 / 3) and 0.0 <= high.low < high.value < high.high <= 1.0
    assert stats.estimate(stats.BY_NAME["rating"], few).high > 3  # a mean rating is not a share: the usual interval
    rng = random.Random(2)
    covered = 0
    for _ in range(400):
        feeds = [outcome(NOW, "a", clicked=[(1, 1.0)] * (rng.random() < 0.9)) for _ in range(40)]
        e = stats.estimate(stats.BY_NAME["feed_ctr"], feeds)
        covered += e.low <= 0.9 <= e.high
        assert 0.0 <= e.low <= e.high <= 1.0
    assert 0.92 <= covered / 400 <= 0.99
