"""The LLM's match learned from a platform's own readers (feed/tower_fit.py, `newsrank tower fit`)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest

from config.settings import Settings
from core.errors import InvalidInput
from core.records import Event
from feed import tower_fit
from feed.recommender import FeedRequest, Recommender
from llm import tower
from llm.backends.fake import FakeBackend
from serve import learning, shipped
from serve.learning import LearningLoop
from serve.service import Newsrank
from tests.conftest import CORPUS, MODEL_CACHE, NOW
from tests.test_learning import ClaimingJobs
from tests.test_tower import mean_auc, topical_impressions

pytestmark = pytest.mark.skipif(shipped.tower(Settings(tower=shipped.NAME)) is None, reason="no shipped tower")
TOPICS = ("s", "p", "t", "f")  # sports, politics, technology, food: CORPUS's ids start with them


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    """A service serving the shipped tower (so stored articles carry the packaged LLM's reading), and 24 readers
    of four topics: each read two articles of their topic, was shown a feed, and clicked its items of their
    topic."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("platform") / "data", model_cache=MODEL_CACHE,
                        scorer_threads=0, tower=shipped.NAME, position_explore_share=0.0)  # fmt: skip
    service = Newsrank.from_settings(settings)
    service.articles.upsert(CORPUS)
    now = time.time()
    for n in range(24):
        reader, topic = f"reader{n}", TOPICS[n % 4]
        read = [a.id for a in CORPUS if a.id.startswith(topic)][:2]
        service.feedback.add_events([Event(reader, a, "click", now - 3600 + i) for i, a in enumerate(read)])
        feed = service.recommend(FeedRequest(reader, k=12, explain=False))
        clicks = [item.article.id for item in feed.items if item.article.id.startswith(topic)]
        service.feedback.add_events([Event(reader, a, "click", now + 60) for a in clicks])
    yield settings, service
    service.feedback.close()


def test_rankings_and_the_clicks_after_them_become_examples_over_stored_readings(platform):
    _, service = platform
    examples = tower_fit.from_feedback(service.feedback, service.articles, float("-inf"))
    assert len(examples) == 24 and sorted(e.reader for e in examples) == sorted(f"reader{n}" for n in range(24))
    stored = service.articles.get([a.id for a in CORPUS])
    for example in examples:
        topic = TOPICS[int(example.reader.removeprefix("reader")) % 4]
        read = [a.id for a in CORPUS if a.id.startswith(topic)][:2]
        history = example.impression.history
        assert history.shape == (2, 576)  # what they had read before the feed, latest first
        assert np.array_equal(history[0], stored[read[1]].reading) and np.array_equal(
            history[1], stored[read[0]].reading
        )
        record = service.feedback.latest_ranking(example.reader)
        assert list(example.impression.labels) == [int(i.article_id.startswith(topic)) for i in record.items]
        assert 0 < sum(example.impression.labels) < len(example.impression.labels)

    fitted, decision = tower_fit.fit_and_gate(examples, None, "no tower", validation_share=0.5, heads=2, epochs=2,
                                              progress=False)  # fmt: skip
    assert decision.new[2] > 0 and decision.current[0] == 50.0  # no tower: every item neutral
    assert decision.passed and decision.new[0] > 70, decision.summary()
    assert fitted.card["gate"]["against"] == "no tower" and fitted.card["impressions"] + fitted.card[
        "validation_rankings"] == 24  # fmt: skip


def test_the_learning_loops_scheduled_retraining_trains_the_served_tower_again_past_its_gate(platform):
    settings, service = platform
    looped = Newsrank(settings.model_copy(update={"tower": "looped", "ranker": "looped", "adapter": "clicks",
                                                  "retrain_every_events": 1}),
                      service.articles, service.feedback, FakeBackend(), tower=service.recommender.tower)  # fmt: skip
    looped.jobs = ClaimingJobs(looped)  # the adapter's training job claimed, its trainer not started
    assert LearningLoop(looped).tick() == learning.TRAINING
    ranker, refit, training = service.feedback.loop_events(3)  # newest first: the tower and ranker beside the job
    assert training["kind"] == learning.TRAINING and refit["kind"] == ranker["kind"] == learning.REFITTED
    assert ranker["details"]["model"] == "ranker" and ranker["details"]["against"] == "the hand-set weights"
    evidence = refit["details"]
    assert evidence["model"] == "tower" and evidence["against"] == "the served tower"
    assert evidence["held_out_rankings"] > 0 and evidence["gate"] in ("passed", "failed")
    passed = evidence["gate"] == "passed"
    assert evidence["published"] == ("looped@1" if passed else "no")
    registry = tower_fit.registry_of(settings.adapters_path)
    assert registry.versions("looped") == ([1] if passed else [])
    assert (looped.recommender.served_tower() is service.recommender.tower) == (not passed)
    # a tower file, or none, is not the loop's to train
    for fixed in (None, str(shipped.FOLDER / shipped.TOWER)):
        unlooped = Newsrank(settings.model_copy(update={"tower": fixed}), service.articles, service.feedback,
                            FakeBackend(), tower=service.recommender.tower)  # fmt: skip
        assert LearningLoop(unlooped).refit_tower() is None


def test_a_few_readers_with_many_feeds_cannot_teach_the_match_what_they_fake():
    """Four hundred honest readers click their topic, a feed each; ten readers of one client, eighty feeds each,
    click anything but theirs. With no reader above 0.5 % of the training, the heads learn the honest topic;
    unbounded, the forged two thirds of the rankings undo it."""
    honest = [tower_fit.Example(f"reader{n}", "platform", i) for n, i in enumerate(topical_impressions(0, 400))]
    forged = []
    for n, i in enumerate(topical_impressions(1, 800)):
        flipped = tuple(1 - label for label in i.labels)
        forged.append(tower_fit.Example(f"bot{n % 10}", "intruder", replace(i, labels=flipped)))
    fresh = topical_impressions(2, 200)
    options = {"validation_share": 0.0, "heads": 1, "epochs": 2, "progress": False}

    def learned(examples, **shares) -> float:
        return mean_auc(tower_fit.fit_and_gate(examples, None, **options, **shares)[0], fresh)

    fair = learned(honest)
    bounded = learned(honest + forged, reader_share=0.005)
    unbounded = learned(honest + forged)
    assert fair > 0.9 and bounded > fair - 0.05 and unbounded < fair - 0.2, (fair, bounded, unbounded)


def test_a_registered_towers_active_version_is_served_and_read_again_when_it_changes(corpus_store, feedback, settings):
    registry = tower_fit.registry_of(settings.adapters_path)
    shipped_tower = shipped.tower(Settings(tower=shipped.NAME))
    ours = settings.model_copy(update={"tower": "ours"})
    recommender = Recommender(corpus_store, feedback, FakeBackend(), ours, tower=shipped_tower)
    assert recommender.served_tower() is shipped_tower  # no version yet: the one it started with
    first = tower.train(topical_impressions(0, 20), heads=1, epochs=1, progress=False, base_model="first")
    second = tower.train(topical_impressions(1, 20), heads=1, epochs=1, progress=False, base_model="second")
    assert registry.publish("ours", first) == 1 and registry.publish("ours", second) == 2
    assert recommender.served_tower().card["base_model"] == "second"
    feedback.add_events([Event("fan", "s1", "click", NOW - 3600)])
    feed = recommender.recommend(FeedRequest("fan", k=4, explain=False))
    assert feedback.ranking(feed.ranking_id).strategy.endswith("+tower:ours@2")  # the record names it
    assert shipped.tower(ours).card["base_model"] == "second"  # what a service starting now reads articles with
    registry.activate("ours", 1)
    assert recommender.served_tower().card["base_model"] == "first"
    pinned = Recommender(corpus_store, feedback, FakeBackend(), settings.model_copy(update={"tower": "ours@2"}),
                         tower=shipped_tower)  # fmt: skip
    assert pinned.served_tower().card["base_model"] == "second"
    with pytest.raises(InvalidInput, match="no tower ours@7"):
        registry.activate("ours", 7)


def test_newsrank_tower_fits_publishes_lists_and_rolls_back(platform):
    settings, _ = platform
    env = {**os.environ, "NEWSRANK_DATA_DIR": str(settings.data_dir), "NEWSRANK_MODEL_CACHE": str(MODEL_CACHE),
           "NEWSRANK_TOWER": shipped.NAME, "NEWSRANK_SCORER_THREADS": "0"}  # fmt: skip

    def run(*args):
        return subprocess.run([sys.executable, "-m", "serve.cli", "tower", *args], env=env, capture_output=True,
                              text=True, timeout=600)  # fmt: skip

    assert "ours@" not in run("list").stdout
    first = run("fit", "ours", "--force", "--heads", "1", "--epochs", "1")
    assert first.returncode == 0, first.stderr
    assert "24 rankings shown" in first.stdout and "(the served tower)" in first.stdout, first.stdout
    assert "published ours@1" in first.stdout and "NEWSRANK_TOWER=ours" in first.stdout
    second = run("fit", "ours", "--force", "--heads", "1", "--epochs", "1")
    assert second.returncode == 0, second.stderr
    assert "(ours@1)" in second.stdout and "published ours@2" in second.stdout, second.stdout
    listed = run("list").stdout
    assert "* ours@2  validation AUC" in listed and "  ours@1  validation AUC" in listed, listed
    assert "ours@1 is now active" in run("rollback", "ours").stdout
    bad = run("activate", "ours@9")
    assert bad.returncode != 0 and "no tower ours@9" in bad.stderr and "Traceback" not in bad.stderr
