import numpy as np
import pytest

from core.records import Event, Preferences
from feed.profile import build_profile, event_weight
from retrieval.store import Hit
from tests.conftest import CORPUS, NOW, article

DAY = 86400.0
HITS = {a.id: Hit(a, np.eye(len(CORPUS), dtype=np.float32)[i]) for i, a in enumerate(CORPUS)}


def test_event_weights():
    assert event_weight(Event("u", "a", "click", NOW)) == 1.0
    assert event_weight(Event("u", "a", "like", NOW)) == 2.0
    assert event_weight(Event("u", "a", "dislike", NOW)) == -2.0
    assert event_weight(Event("u", "a", "dwell", NOW, dwell_seconds=30)) == 0.5
    assert event_weight(Event("u", "a", "dwell", NOW, dwell_seconds=600)) == 1.0  # capped
    assert event_weight(Event("u", "a", "impression", NOW)) == 0.0


def test_profile_from_events_with_decay():
    events = [
        Event("u", "s1", "click", NOW - 14 * DAY),  # one half-life old: weight 0.5
        Event("u", "s2", "click", NOW - 1 * DAY),
        Event("u", "t1", "click", NOW),  # weight 1
        Event("u", "p1", "impression", NOW),  # seen, no signal
        Event("u", "f1", "dislike", NOW),
        Event("u", "gone", "click", NOW),  # no longer in the store
    ]
    p = build_profile("u", events, Preferences(), HITS, NOW, half_life_days=14.0)
    assert not p.cold_start
    assert p.seen == {"s1", "s2", "t1", "p1", "f1", "gone"}
    assert [h.article_id for h in p.history] == ["t1", "s2", "s1"]  # most recent first, positives only
    w_s2 = 0.5 ** (1 / 14)
    sports = 0.5 + w_s2
    assert p.category_shares["sports"] == pytest.approx(sports / (sports + 1.0))
    assert p.category_shares["technology"] == pytest.approx(1.0 / (sports + 1.0))
    assert "food" not in p.category_shares  # net negative
    assert [i.label for i in p.interests][:2] == ["sports", "technology"]
    # the query is the engagement-weighted mean of the positive articles' embeddings
    expected = (0.5 * HITS["s1"].embedding + w_s2 * HITS["s2"].embedding + HITS["t1"].embedding) / (0.5 + w_s2 + 1)
    np.testing.assert_allclose(p.query, expected, rtol=1e-6)


def test_affinity_mutes_and_explicit_interests():
    events = [Event("u", "s1", "click", NOW), Event("u", "s3", "click", NOW), Event("u", "f1", "click", NOW)]
    p = build_profile("u", events, Preferences(interests=("politics",), mutes=("Food",)), HITS, NOW,
                      explicit_vector=np.ones(len(CORPUS)))  # fmt: skip
    assert p.mutes == ("food",) and "food" not in p.category_shares
    assert p.category_shares == {"sports": 1.0}
    # football: category share 1, subcategory share 1/2 (s1 football, s3 basketball; recipes muted? no: only food)
    assert p.affinity(article("x", "t", "sports", subcategory="football")) == pytest.approx(0.5 * (1.0 + 0.5))
    assert p.affinity(article("y", "t", "politics")) == 1.0  # asked for explicitly
    assert p.affinity(article("z", "t", "science")) == 0.0
    assert "politics" in p.labels


def test_cold_start_reader():
    p = build_profile("new", [], Preferences(), HITS, NOW)
    assert p.cold_start and p.query is None and p.interests == ()
    assert p.render() == "A new reader with no reading history yet."
    only_explicit = build_profile("new", [], Preferences(interests=("ai",)), HITS, NOW, explicit_vector=np.ones(3))
    assert not only_explicit.cold_start and only_explicit.query is not None


def test_closest_is_the_largest_similarity_to_one_history_item():
    events = [Event("u", "s1", "click", NOW - DAY), Event("u", "t1", "click", NOW), Event("u", "f1", "dislike", NOW)]
    profile = build_profile("u", events, Preferences(), HITS, NOW)
    assert profile.engaged == 2  # the dislike is no history
    ids = ["s1", "t1", "f1", "s2"]
    closest = profile.closest(np.stack([HITS[a].embedding for a in ids]))
    assert closest.tolist() == pytest.approx([1.0, 1.0, 0.0, 0.0])  # one-hot embeddings: itself or nothing
    assert profile.closest(np.zeros((0, len(CORPUS)))).shape == (0,)  # no candidates, no work
    assert build_profile("v", [], Preferences(), HITS, NOW).closest(np.eye(3, len(CORPUS))).tolist() == [0.0] * 3
