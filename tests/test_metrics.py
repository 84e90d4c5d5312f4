import math

import numpy as np
import pytest

from core.metrics import auc, dcg, fit_logistic, intra_list_distance, mrr, ndcg, ranks, standard_error


def test_auc_by_hand():
    assert auc([1, 0, 0], [0.9, 0.5, 0.1]) == 1.0
    assert auc([1, 0, 0], [0.1, 0.5, 0.9]) == 0.0
    # pairs (pos, neg): (0.6 > 0.5) yes, (0.6 > 0.7) no, (0.2 > 0.5) no, (0.2 > 0.7) no → 1/4
    assert auc([1, 0, 1, 0], [0.6, 0.5, 0.2, 0.7]) == 0.25
    assert auc([1, 0], [0.5, 0.5]) == 0.5  # ties count half
    assert auc([1, 1], [0.1, 0.2]) is None and auc([0, 0], [0.1, 0.2]) is None


def test_mrr_and_ndcg_by_hand():
    labels, scores = [0, 1, 0, 1], [0.9, 0.8, 0.7, 0.1]  # clicked items at ranks 2 and 4
    assert mrr(labels, scores) == pytest.approx((1 / 2 + 1 / 4) / 2)
    assert dcg(labels, scores, 10) == pytest.approx(1 / math.log2(3) + 1 / math.log2(5))
    ideal = 1 + 1 / math.log2(3)
    assert ndcg(labels, scores, 10) == pytest.approx((1 / math.log2(3) + 1 / math.log2(5)) / ideal)
    assert ndcg(labels, scores, 2) == pytest.approx((1 / math.log2(3)) / ideal)
    assert ndcg([0, 0], [1, 2], 5) == 0.0


def test_ranks_in_mind_prediction_format():
    assert ranks([0.2, 0.9, 0.5]) == [3, 1, 2]
    assert ranks([0.5, 0.5, 0.1]) == [1, 2, 3]  # ties keep input order


def test_diversity_and_standard_error():
    assert intra_list_distance(np.array([[1.0, 0.0], [1.0, 0.0]])) == pytest.approx(0.0)
    assert intra_list_distance(np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])) == pytest.approx(2 / 3)
    assert intra_list_distance(np.array([[1.0, 0.0]])) == 0.0
    assert standard_error([1.0, 3.0]) == pytest.approx(1.0)  # std 1.414 / sqrt(2)


def test_logistic_regression_recovers_known_weights():
    rng = np.random.default_rng(0)
    x = rng.random((20000, 2))
    true = np.array([3.0, -1.0, -0.5])
    p = 1 / (1 + np.exp(-(x @ true[:2] + true[2])))
    y = (rng.random(20000) < p).astype(float)
    w = fit_logistic(x, y, l2=1e-6)
    assert w == pytest.approx(true, abs=0.3)


def test_gini_and_exposure_shares_by_hand():
    from core.metrics import gini
    from core.records import Article
    from feed.exposure import ExposureTally

    assert gini([3, 3, 3]) == 0.0 and gini([]) == 0.0 and gini([0, 0]) == 0.0
    assert gini([0, 0, 0, 4]) == pytest.approx(0.75)  # one of four holds everything: (n - 1) / n
    assert gini([1, 2, 3, 4]) == pytest.approx(0.25)
    x, y, z, w = (Article(i, i.upper(), 0.0, category=c, source=s)
                  for i, c, s in (("x", "sports", "wire"), ("y", "sports", "daily"), ("z", "news", "wire"),
                                  ("w", "news", "")))  # fmt: skip
    tally = ExposureTally(max_labels=None, max_items=None)
    tally.add([x, y, z, w], [x, y], usual={"sports", "news"})
    tally.add([x, y, z, w], [x, z], usual={"sports"})
    found = tally.snapshot()
    assert found.feeds == 2 and found.outside == 0.5 and found.outside_slots == 0.25
    assert found.category == {"news": (0.25, 0.5), "sports": (0.75, 0.5)}
    assert found.source == {"wire": (0.75, 0.5), "daily": (0.25, 0.25), "unknown": (0.0, 0.25)}  # no source: unknown
    assert list(found.source) == ["wire", "daily", "unknown"]  # largest share first, ties by label
    assert list(found.category) == ["news", "sports"]
    assert found.gini == pytest.approx(gini([2, 1, 1, 0]))


def test_a_paired_difference_is_taken_group_by_group_and_judged_with_its_spread():
    from core.metrics import not_worse, paired_auc_by_group

    # reader a: both rank the click first (1 and 1); reader b: new 1, current 0; reader c only in `new`
    new = [("a", [1, 0], [0.9, 0.1]), ("b", [1, 0], [0.9, 0.1]), ("b", [0, 1], [0.2, 0.8]), ("c", [1, 0], [1, 0])]
    current = [("a", [1, 0], [0.8, 0.3]), ("b", [1, 0], [0.1, 0.9]), ("b", [0, 1], [0.9, 0.2])]
    difference, se, groups = paired_auc_by_group(new, current)
    assert groups == 2 and difference == pytest.approx(50.0) and se == pytest.approx(50.0)
    assert paired_auc_by_group(new, []) == (0.0, 0.0, 0)
    assert not not_worse(5.0, 0.0, 1, tolerance=1.0)  # one reader says nothing of the spread
    assert not not_worse(-0.1, 0.01, 100, tolerance=1.0)  # worse on average
    assert not_worse(0.5, 0.5, 100, tolerance=1.0)  # 0.5 - 1.66 * 0.5 > -1
    assert not not_worse(0.5, 1.0, 100, tolerance=1.0)  # 0.5 - 1.66 > -1: it may be worse by more than 1
    assert not not_worse(difference, se, groups, tolerance=1.0)  # +50 on two readers: t(1) is 6.3
