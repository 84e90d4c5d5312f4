import sqlite3

import pytest

from agent.errors import InvalidInput, NotFound
from agent.feedback import MIGRATIONS, Event, FeedbackStore, Preferences, RankedItem, RankingRecord
from tests.conftest import NOW


def record(ranking_id: str, user_id: str, created_at: float, article_ids: list[str]) -> RankingRecord:
    items = tuple(
        RankedItem(i, a, f"title {a}", 0.5, 0.6, 1.0, 0.9, 0.4, 0.3, 2.0, "because", "template", ("interest: x",))
        for i, a in enumerate(article_ids, start=1)
    )
    return RankingRecord(ranking_id, user_id, created_at, "pointwise", "v1", "fake", "m", None, {"relevance": 1.0},
                         "profile", False, items)  # fmt: skip


def test_schema_is_migrated_and_durable(feedback: FeedbackStore, tmp_path):
    assert feedback.schema_version == len(MIGRATIONS)
    assert feedback._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert feedback._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    feedback.migrate()  # idempotent
    assert feedback.schema_version == len(MIGRATIONS)


def test_events_are_visible_to_another_connection_once_added(feedback: FeedbackStore):
    events = [Event("u1", "a1", "click", NOW), Event("u1", "a2", "dwell", NOW + 1, dwell_seconds=30.0)]
    assert feedback.add_events(events) == 2
    other = sqlite3.connect(feedback.path)  # committed, not just buffered in our connection
    assert other.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 2
    assert feedback.events("u1") == events
    assert feedback.events("u1", since=NOW + 0.5) == events[1:]
    assert feedback.events("nobody") == []


def test_events_survive_reopening(tmp_path):
    path = tmp_path / "f.sqlite3"
    first = FeedbackStore(path)
    first.add_events([Event("u", "a", "like", NOW)])
    first.close()
    assert FeedbackStore(path).events("u")[0].type == "like"


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(user_id="u", article_id="a", type="read", ts=NOW),
        dict(user_id="", article_id="a", type="click", ts=NOW),
        dict(user_id="u", article_id="a", type="dwell", ts=NOW, dwell_seconds=-1.0),
    ],
)
def test_bad_events_are_rejected(kwargs):
    with pytest.raises(InvalidInput):
        Event(**kwargs)


def test_a_failing_batch_stores_nothing(feedback: FeedbackStore):
    # a trigger that fails on the second row: the first must not stay behind
    feedback._db.execute(
        "CREATE TRIGGER no_bad BEFORE INSERT ON events WHEN NEW.article_id = 'bad' BEGIN SELECT RAISE(ABORT, 'x'); END"
    )
    with pytest.raises(sqlite3.IntegrityError):
        feedback.add_events([Event("u", "good", "click", NOW), Event("u", "bad", "click", NOW)])
    assert feedback.count_events() == 0


def test_popularity_and_known_users(feedback: FeedbackStore):
    feedback.add_events(
        [Event("u1", "a", "click", NOW), Event("u2", "a", "like", NOW), Event("u2", "b", "skip", NOW),
         Event("u3", "c", "click", NOW - 100)]
    )  # fmt: skip
    assert feedback.click_counts(since=NOW - 10) == {"a": 2}
    assert feedback.known_user("u2") and not feedback.known_user("u9")
    feedback.set_preferences("u9", Preferences(("ai",), ("food",)), NOW)
    assert feedback.known_user("u9")
    assert feedback.preferences("u9") == Preferences(("ai",), ("food",))
    assert feedback.preferences("nobody") == Preferences()


def test_ranking_records_round_trip(feedback: FeedbackStore):
    feedback.record_ranking(record("r1", "u", NOW, ["a", "b"]))
    feedback.record_ranking(record("r2", "u", NOW + 10, ["b", "c"]))
    assert feedback.ranking("r1") == record("r1", "u", NOW, ["a", "b"])
    assert feedback.latest_ranking_with("u", "b").ranking_id == "r2"
    assert feedback.latest_ranking_with("u", "a").ranking_id == "r1"
    with pytest.raises(NotFound):
        feedback.latest_ranking_with("u", "zzz")
    with pytest.raises(NotFound):
        feedback.ranking("nope")
    with pytest.raises(sqlite3.IntegrityError):  # ranking ids are unique
        feedback.record_ranking(record("r1", "u", NOW, ["a"]))
    assert len(feedback.ranking("r1").items) == 2  # the failed write left the first intact


def test_an_older_database_is_migrated_forward_with_its_data(tmp_path):
    path = tmp_path / "old.sqlite3"
    old = sqlite3.connect(path)
    old.executescript(MIGRATIONS[0] + "PRAGMA user_version = 1;")
    old.execute("INSERT INTO rankings VALUES ('r0','u',1.0,'pointwise','v1','fake','m',NULL,'{}','p',0)")
    old.execute(
        "INSERT INTO ranking_items(ranking_id, position, article_id, title, score, relevance, diversity, freshness,"
        " similarity, affinity, age_hours) VALUES ('r0', 1, 'a', 't', 0.5, 0.5, 1, 1, 0.5, 0.5, 1)"
    )
    old.commit()
    old.close()
    store = FeedbackStore(path)
    assert store.schema_version == len(MIGRATIONS) >= 2
    item = store.ranking("r0").items[0]
    assert item.article_id == "a" and item.popularity == 0.0
