"""What readers' behaviour says of a candidate (feed/signals.py), against hand-computed numbers."""

import math

import numpy as np
import pytest

from core.records import Article, Hit
from feed import position, signals


def hits(*ids: str) -> list[Hit]:
    return [Hit(Article(a, a, "", "news", "", "", 0.0), np.ones(3, dtype=np.float32)) for a in ids]


def test_click_through_is_readers_who_clicked_over_readers_shown_smoothed_toward_the_pooled_rate():
    clicks, shows = {"a": 5, "b": 0, "x": 9}, {"a": 10, "b": 10}
    pooled = 5 / 20  # the candidates' clicks over their shows ("x" was not shown among them)
    got = signals.click_through(clicks, shows, hits("a", "b", "new"))
    assert got == pytest.approx([(5 + 10 * pooled) / 20, (0 + 10 * pooled) / 20, pooled])
    assert signals.click_through({}, {}, hits("a")) == [0.0]
    assert signals.click_through({"a": 50}, {"a": 1}, hits("a")) == [1.0]  # clicks without a show: at most 1


def test_click_through_counts_a_reader_shown_an_article_low_as_less_than_one_who_looked():
    """Both articles clicked by 2 of 10 readers shown them: the one shown tenth was looked at by fewer, so its
    readers clicked it more often than the one shown first."""
    shows = {"top": position.examined({1: 10}), "low": position.examined({10: 10})}
    assert shows == pytest.approx({"top": 10.0, "low": 1.0})
    top, low = signals.click_through({"top": 2, "low": 2}, shows, hits("top", "low"))
    pooled = 4 / 11
    assert top == pytest.approx((2 + 10 * pooled) / 20) and low == pytest.approx((2 + 10 * pooled) / 11)
    assert low > top
    # readers shown it first, second (two) and 80th: a place deeper than the prior's has its last place's weight
    assert position.examined({1: 1, 2: 2, 80: 1}) == pytest.approx(1 + 2 / 2 + 1 / 50)


def test_click_through_does_not_depend_on_the_size_of_the_traffic():
    small = signals.click_through({"a": 3, "b": 1}, {"a": 10, "b": 10}, hits("a", "b"))
    large = signals.click_through({"a": 300, "b": 100}, {"a": 1000, "b": 1000}, hits("a", "b"))
    assert large[0] > large[1] and small[0] > small[1] and large[0] == pytest.approx(0.3, abs=0.005)


def test_coclicks_are_the_mean_item_cosine_to_the_readers_history_without_the_reader():
    pairs = [("r1", "h"), ("r1", "x"), ("r2", "h"), ("r2", "x"), ("r3", "x"), ("me", "h"), ("me", "y")]
    index = signals.CoClicks(pairs)
    # R(h) = {r1, r2} without me, R(x) = {r1, r2, r3}: 2 / sqrt(2 × 3); y was clicked by me alone
    got = index.scores(["h", "unknown"], hits("x", "y", "z"), reader="me")
    assert got == pytest.approx([2 / math.sqrt(6) / 2, 0.0, 0.0])
    assert index.scores([], hits("x"), "me") == [0.0]
    assert signals.CoClicks(pairs, max_pairs=2).readers == {"h": {"r1"}, "x": {"r1"}}  # bounded
