import math

import numpy as np
import pytest

from core.records import BlendWeights, Signals
from feed.blend import blend_rank, freshness, weighted_mean
from llm.relevance import yes_probability


def test_freshness_halves_every_half_life():
    assert freshness(0, 24) == 1.0
    assert freshness(24, 24) == pytest.approx(0.5)
    assert freshness(36, 24) == pytest.approx(0.5**1.5)  # 0.35355
    assert freshness(-5, 24) == 1.0  # a clock skew into the future counts as brand new
    with pytest.raises(ValueError):
        freshness(1, 0)


def test_yes_probability_is_two_way_softmax():
    assert yes_probability(2.0, 2.0) == pytest.approx(0.5)
    # softmax([3, 1])[0] = e^3 / (e^3 + e^1)
    assert yes_probability(3.0, 1.0) == pytest.approx(math.exp(3) / (math.exp(3) + math.exp(1)))
    assert yes_probability(-800.0, 800.0) == pytest.approx(0.0)  # no overflow


def test_weighted_mean():
    assert weighted_mean(np.array([[0.0, 2.0], [4.0, 0.0]]), [1, 3]).tolist() == [3.0, 0.5]
    with pytest.raises(ValueError):
        weighted_mean(np.zeros((1, 2)), [0])


def test_blend_rank_against_hand_computed_scores():
    # three candidates; 0 and 1 are identical in embedding space, 2 is orthogonal
    embeddings = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    signals = [
        Signals(relevance=0.9, freshness=0.5, similarity=0.8, affinity=0.5),
        Signals(relevance=0.8, freshness=0.5, similarity=0.8, affinity=0.5),
        Signals(relevance=0.5, freshness=1.0, similarity=0.2, affinity=0.0),
    ]
    w = BlendWeights(relevance=0.4, diversity=0.2, freshness=0.2, similarity=0.1, affinity=0.1)
    placed = blend_rank(signals, embeddings, w)
    # slot 1: base + 0.2·1 → c0: .36+.1+.08+.05+.2 = .79, c1: .32+.1+.08+.05+.2 = .75, c2: .2+.2+.02+0+.2 = .62
    assert placed[0].index == 0 and placed[0].score == pytest.approx(0.79) and placed[0].diversity == 1.0
    # slot 2: c1 duplicates c0 (gain 0) → .55; c2 is orthogonal (gain 1) → .62: diversity reorders
    assert placed[1].index == 2 and placed[1].score == pytest.approx(0.62) and placed[1].diversity == 1.0
    assert placed[2].index == 1 and placed[2].score == pytest.approx(0.55) and placed[2].diversity == 0.0


def test_blend_rank_edges():
    assert blend_rank([], np.zeros((0, 2)), BlendWeights()) == []
    one = [Signals(0.5, 0.5, 0.5)]
    assert [p.index for p in blend_rank(one * 3, np.eye(3), BlendWeights(), k=2)] == [0, 1]  # ties: earlier first


def test_yes_probability_from_top_logprobs():
    from llm.relevance import yes_probability_from_top

    top = {7: -0.1, 9: -2.5, 3: -4.0}  # Yes = 7, No = 9
    assert yes_probability_from_top(top, (7, 9)) == pytest.approx(yes_probability(-0.1, -2.5))
    # a missing answer is bounded by the least likely token shown
    assert yes_probability_from_top(top, (7, 11)) == pytest.approx(yes_probability(-0.1, -4.0))
    assert yes_probability_from_top(top, (11, 9)) == pytest.approx(yes_probability(-4.0, -2.5))
    assert yes_probability_from_top(top, (11, 12)) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        yes_probability_from_top({}, (7, 9))


def test_every_part_reads_the_one_declaration_of_the_signals():
    from dataclasses import fields

    from chat.conversation import NAMED, REASONS, SAYING
    from config.settings import Weights
    from core.records import BLEND, SIGNALS
    from serve.schemas import SignalsOut

    names = [spec.name for spec in BLEND]
    assert [f.name for f in fields(Signals)] == [spec.name for spec in SIGNALS] == names[:-1]
    assert list(Weights.model_fields) == list(BlendWeights()) == list(SignalsOut.model_fields) == names
    assert list(REASONS) == list(NAMED) == list(SAYING) == names
    assert all(NAMED[n] and SAYING[n] for n in names)  # every term can be named in chat and its reason stated
    assert Weights().frozen() == BlendWeights() == {spec.name: spec.weight for spec in BLEND}
    with pytest.raises(ValueError, match="unknown signals"):
        BlendWeights(recency=1.0)


def caps_case(**caps):
    """Six candidates by falling relevance: three from one source in sports (the reader's usual), then others."""
    from feed.blend import Caps

    signals = [Signals(relevance=1.0 - i / 10) for i in range(6)]
    sources = ["wire", "wire", "wire", "daily", "", "daily"]
    categories = ["sports", "sports", "sports", "politics", "sports", "science"]
    outside = [c != "sports" for c in categories]
    embeddings = np.eye(6)
    weights = BlendWeights(relevance=1.0, similarity=0, affinity=0, popularity=0, freshness=0, diversity=0)
    return blend_rank(signals, embeddings, weights, 4, Caps(sources, categories, outside, **caps) if caps else None)


def test_exposure_caps_hold_items_back_and_say_which_cap_moved_what():
    assert [p.index for p in caps_case()] == [0, 1, 2, 3]
    assert all(p.moved_by is None for p in caps_case())
    by_source = caps_case(per_source=2)
    assert [(p.index, p.moved_by) for p in by_source] == [(0, None), (1, None), (3, "source"), (4, "source")]
    by_category = caps_case(category_share=0.5)  # at most 2 of 4 from one category
    assert [(p.index, p.moved_by) for p in by_category] == [(0, None), (1, None), (3, "category"), (5, "category")]
    exploring = caps_case(exploration_share=0.5)  # at least 2 of 4 from outside sports: the last two slots
    assert [(p.index, p.moved_by) for p in exploring] == [(0, None), (1, None), (3, "exploration"), (5, "exploration")]
    assert [p.index for p in caps_case(exploration_share=0.25)] == [0, 1, 2, 3]  # already met: nothing moves
    # caps no candidate can meet do not shorten the feed: the blend's own choice fills the slot
    strict = caps_case(per_source=1, category_share=0.25)
    assert [(p.index, p.moved_by) for p in strict] == [(0, None), (3, "source"), (1, None), (2, None)]
