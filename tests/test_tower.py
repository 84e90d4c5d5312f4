"""The LLM's match of readers and articles (llm/tower.py): heads trained on clicks over the LLM's readings."""

from __future__ import annotations

import numpy as np
import pytest

from config.settings import PACKAGED_LLM, Settings
from core import metrics
from core.errors import InvalidInput
from core.records import Event
from feed.recommender import FeedRequest
from llm import tower
from retrieval.store import pack_reading, unpack_reading
from serve import shipped
from serve.service import Newsrank
from tests.conftest import CORPUS, MODEL_CACHE, NOW


def topical_impressions(seed: int, n: int, shuffled: bool = False) -> list[tower.Impression]:
    """Readers who read one of 4 topics and click that topic's candidates. The topic lives in 4 of 16 dimensions;
    the other 12 are noise three times as large, so a raw cosine mostly sees noise and a trained head must find
    the topic."""
    rng = np.random.default_rng(seed)
    centres = np.eye(4) * 2.0

    def items(topics: np.ndarray) -> np.ndarray:
        return np.hstack([centres[topics] + rng.normal(0, 0.5, (len(topics), 4)), rng.normal(0, 3, (len(topics), 12))])

    out = []
    for _ in range(n):
        topic = int(rng.integers(4))
        candidates = rng.integers(4, size=12)
        candidates[0] = topic  # at least one click
        labels = [int(c == topic) for c in candidates]
        if shuffled:
            labels = list(rng.permutation(labels))
        out.append(tower.Impression(items(np.full(6, topic)), items(candidates), labels))
    return out


def mean_auc(t: tower.Tower | None, impressions: list[tower.Impression]) -> float:
    def score(i: tower.Impression) -> list[float]:
        if t is not None:
            return t.match(list(i.history), list(i.candidates))
        reader = i.history.mean(axis=0)
        return (i.candidates @ reader / np.linalg.norm(i.candidates, axis=1)).tolist()

    return float(np.mean([metrics.auc(i.labels, score(i)) for i in impressions if 0 < sum(i.labels) < len(i.labels)]))


def test_heads_trained_on_clicks_find_what_a_raw_cosine_misses():
    trained = tower.train(topical_impressions(0, 300), heads=2, epochs=2, progress=False)
    fresh = topical_impressions(1, 200)
    raw, learned = mean_auc(None, fresh), mean_auc(trained, fresh)
    assert learned > 0.95 and learned > raw + 0.3, (raw, learned)
    # shuffled clicks: what is left is the standardised readings' own cosine, no topic learned
    noise = tower.train(topical_impressions(0, 300, shuffled=True), heads=2, epochs=2, progress=False)
    assert mean_auc(noise, fresh) < learned - 0.15


def test_a_tower_file_keeps_its_heads_and_its_card(tmp_path):
    trained = tower.train(topical_impressions(0, 40), heads=3, epochs=1, progress=False, base_model="m")
    loaded = tower.Tower.load(trained.save(tmp_path / "t.safetensors"))
    assert loaded.card == trained.card and loaded.card["heads"] == 3 and loaded.card["base_model"] == "m"
    probe = topical_impressions(2, 1)[0]
    assert loaded.match(list(probe.history), list(probe.candidates)) == trained.match(
        list(probe.history), list(probe.candidates)
    )
    (tmp_path / "junk.safetensors").write_bytes(b"not a tower")
    with pytest.raises(InvalidInput):
        tower.Tower.load(tmp_path / "junk.safetensors")


def test_match_is_neutral_where_a_reading_is_missing():
    trained = tower.train(topical_impressions(0, 40), heads=1, epochs=1, progress=False)
    probe = topical_impressions(3, 1)[0]
    assert trained.match([None, None], list(probe.candidates)) == [tower.NEUTRAL] * len(probe.candidates)
    scores = trained.match(list(probe.history), [None, *probe.candidates[:3]])
    assert scores[0] == tower.NEUTRAL and all(0.0 <= s <= 1.0 for s in scores) and len(set(scores[1:])) == 3
    other_model = np.ones(32, dtype=np.float32)  # stored by a tower of another base model
    assert trained.match([other_model], list(probe.candidates[:2])) == [tower.NEUTRAL] * 2
    assert trained.match(list(probe.history), [other_model])[0] == tower.NEUTRAL
    assert np.array_equal(unpack_reading(pack_reading(probe.history[0])),
                          probe.history[0].astype(np.float16).astype(np.float32))  # fmt: skip
    assert unpack_reading(None) is None and unpack_reading("") is None


@pytest.fixture(scope="module")
def reader() -> tower.ArticleReader:
    return tower.ArticleReader(PACKAGED_LLM, MODEL_CACHE)


def test_an_articles_reading_does_not_depend_on_its_batch(reader):
    """The packaged LLM's mean-pooled last layer: padding in a batch must not leak into a shorter text's reading."""
    alone = np.stack([reader([a])[0] for a in CORPUS[:4]])
    together = reader(CORPUS[:4])
    cosine = (alone * together).sum(1) / np.linalg.norm(alone, axis=1) / np.linalg.norm(together, axis=1)
    assert cosine.min() > 0.999, cosine
    assert alone.shape == (4, 576) and np.linalg.norm(alone[0] - alone[1]) > 0.05 * np.linalg.norm(alone[0])


@pytest.mark.skipif(shipped.tower(Settings(tower=shipped.NAME)) is None, reason="serve/shipped holds no tower")
def test_stored_articles_carry_their_reading_and_feeds_the_shipped_towers_match(tmp_path):
    """The shipped tower: articles stored through a service get their reading by the packaged LLM, and a feed's
    record carries each item's match, higher for the reader's own topic."""
    settings = Settings(data_dir=tmp_path / "data", model_cache=MODEL_CACHE, scorer_threads=0, tower=shipped.NAME)
    service = Newsrank.from_settings(settings)
    assert service.recommender.tower is not None and service.articles.reader is not None
    service.articles.upsert(CORPUS)
    assert all(h.reading is not None and h.reading.shape == (576,) for h in service.articles.get(["s1", "p1"]).values())
    service.feedback.add_events([Event("fan", a, "click", NOW - 3600) for a in ("s1", "s2", "s3")])
    feed = service.recommend(FeedRequest("fan", k=12))
    record = service.feedback.ranking(feed.ranking_id)
    match = {i.article_id: i.signals["match"] for i in record.items}
    sports = [v for a, v in match.items() if a.startswith("s")]
    others = [v for a, v in match.items() if not a.startswith("s")]
    assert sports and others and np.mean(sports) > np.mean(others), match
    assert tower.NEUTRAL not in match.values()
