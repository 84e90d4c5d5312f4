"""Feeds from the LLM's work done ahead (feed/background_scorer.py, serve/worker.py): the cache, the queue's coalescing and
bounds, degrading when the LLM is down or slow, explanation rewrites, and warm feeds equal to fresh ones on the
real packaged LLM."""

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from litestar.testing import TestClient

from core.errors import BackendError
from core.records import Event, Preferences, ScoringTask
from feed.background_scorer import Scorer
from feed.blend import without
from feed.recommender import FeedRequest, Recommender, profile_key
from llm.backends.fake import FakeBackend
from serve.app import create_app
from serve.limits import ModelSlots
from serve.service import Newsrank
from serve.worker import ScoringWorkers
from tests.conftest import NOW

KEYS = [{"name": "admin", "key": "k-admin-0123456789", "scope": "admin"}]
AUTH = {"Authorization": "Bearer k-admin-0123456789"}


def read_sports(feedback, user="fan"):
    feedback.add_events([Event(user, a, "click", NOW - 3600) for a in ("s1", "s2", "s3")])


@pytest.fixture
def service(corpus_store, feedback, settings):
    settings = settings.model_copy(update={"api_keys": json.dumps(KEYS)})
    read_sports(feedback)
    return Newsrank(settings, corpus_store, feedback, FakeBackend(), clock=lambda: NOW)


def work(service) -> int:
    return ScoringWorkers(service.recommender, 1).run_until_idle()


def sources(feed) -> list[str]:
    return [i.record.relevance_source for i in feed.items]


def test_a_feed_never_runs_the_llm_and_asks_for_the_readers_scoring(service):
    feed = service.recommend(FeedRequest("fan", k=6, explain=False))
    assert service.backend.calls == []  # the model did nothing while the reader waited
    assert sources(feed) == ["none"] * 6 and feed.rescore and not feed.degraded
    assert all(i.record.signals["relevance"] == 0.0 for i in feed.items)
    assert [i.article.category for i in feed.items[:3]] == ["sports"] * 3  # the other signals know the reader
    assert service.feedback.scoring_queue() == {"reader": (1, NOW)}
    record = service.feedback.ranking(feed.ranking_id)
    assert [i.relevance_source for i in record.items] == ["none"] * 6


def test_once_scored_the_feed_reads_the_llms_relevance(service):
    service.recommend(FeedRequest("fan", k=6, explain=False))
    assert work(service) == 1 and service.backend.calls == ["score:12"]
    warm = service.recommend(FeedRequest("fan", k=6, explain=False))
    assert service.backend.calls == ["score:12"] and sources(warm) == ["llm"] * 6 and not warm.rescore
    fresh = service.recommend(FeedRequest("fan", k=6, explain=False, fresh=True))
    assert [i.article.id for i in warm.items] == [i.article.id for i in fresh.items]
    for a, b in zip(warm.items, fresh.items, strict=True):
        assert a.record.signals == pytest.approx(b.record.signals) and a.record.score == pytest.approx(b.record.score)
    assert service.feedback.scoring_queue() == {}


def test_a_click_makes_the_scores_stale_and_asks_again_once(service):
    service.recommend(FeedRequest("fan", k=6, explain=False))
    work(service)
    for article in ("s4", "s5", "s6", "s7"):  # four clicks in a row: one rescoring
        service.add_events([{"user_id": "fan", "article_id": article, "type": "click"}])
    assert service.feedback.scoring_queue()["reader"][0] == 1
    after = service.recommend(FeedRequest("fan", k=6, explain=False))
    assert set(sources(after)) <= {"llm-stale", "none"} and "llm-stale" in sources(after)
    assert work(service) == 2  # the reader's task, then the refresh of their stale scores it asked for
    assert set(sources(service.recommend(FeedRequest("fan", k=6, explain=False)))) == {"llm"}


COVER_FIRST = [("reader", "fan", 1), ("reader", "other", 12), ("refresh", "fan", 11)]  # (task, reader, scored)
ALL_AT_ONCE = [("reader", "fan", 12), ("reader", "other", 12)]


@pytest.mark.parametrize(("cover_first", "expected"), [(True, COVER_FIRST), (False, ALL_AT_ONCE)])
def test_missing_scores_are_covered_before_stale_ones_are_refreshed(corpus_store, feedback, settings, cover_first,
                                                                    expected):  # fmt: skip
    """Cover first: a reader's task scores only what has no score (here the fan's new article); the stale rest
    waits for a refresh task behind every other reader's missing scores. Off, one task rescores all at once."""
    read_sports(feedback)
    feedback.add_events([Event("other", a, "click", NOW - 3600) for a in ("s1", "s2")])  # a profile of their own
    service = Newsrank(settings.model_copy(update={"cover_first": cover_first}), corpus_store, feedback,
                       FakeBackend(), clock=lambda: NOW)  # fmt: skip
    service.recommender.precompute("fan")
    service.add_events([{"user_id": "fan", "article_id": "s4", "type": "click"}])  # a new profile
    service.upsert_articles([{"id": "s99", "title": "Hawks sign a new striker", "category": "sports"}])
    scorer = Scorer(service.recommender, "w")
    done, calls = [], service.backend.calls
    calls.clear()
    while (task := scorer.run_once()) is not None:
        scored = sum(int(c.split(":")[1]) for c in calls)
        calls.clear()
        done.append((task.kind, task.subject, scored))
    assert done == expected
    feed = service.recommend(FeedRequest("fan", k=6, explain=False))
    assert set(sources(feed)) == {"llm"}


@pytest.mark.parametrize("shared", [True, False])
def test_readers_whose_profiles_read_the_same_share_their_scores(corpus_store, feedback, settings, shared):
    """A reader whose profile reads word for word as one already scored (the same clicks) gets those scores in
    their feed at once, and scoring them calls the LLM on nothing; a reader with another profile shares nothing."""
    read_sports(feedback, "first")
    read_sports(feedback, "twin")
    feedback.add_events([Event("other", "s1", "click", NOW - 3600)])
    service = Newsrank(settings.model_copy(update={"shared_scores": shared}), corpus_store, feedback, FakeBackend(),
                       clock=lambda: NOW)  # fmt: skip
    scored = service.recommender.precompute("first")
    assert scored == settings.candidates
    assert set(sources(service.recommend(FeedRequest("twin", k=6, explain=False)))) == {"llm" if shared else "none"}
    calls = service.backend.calls
    calls.clear()
    assert service.recommender.precompute("twin") == (0 if shared else scored)
    assert bool(calls) is not shared
    assert set(sources(service.recommend(FeedRequest("other", k=6, explain=False)))) == {"none"}


def test_a_profile_change_is_what_stales_a_score(service):
    service.recommend(FeedRequest("fan", k=3, explain=False))
    work(service)
    text = service.recommender.profile("fan").render(service.settings.history_titles)
    cached = service.feedback.cached_relevance("fan", service.recommender.scorer(None), ["s4"])
    assert cached["s4"].profile_key == profile_key(text)
    service.set_preferences("fan", mutes=["politics"])  # preferences are part of the profile too
    assert service.feedback.scoring_queue()["reader"][0] == 1
    assert "llm-stale" in sources(service.recommend(FeedRequest("fan", k=3, explain=False)))


def test_a_new_reader_needs_no_scoring(service):
    feed = service.recommend(FeedRequest("newcomer", k=4, explain=False))
    assert feed.cold_start and set(sources(feed)) == {"popularity"} and not feed.rescore
    assert service.feedback.scoring_queue() == {}


def test_scores_are_kept_per_adapter(corpus_store, feedback, settings):
    read_sports(feedback)
    recommender = Recommender(corpus_store, feedback, FakeBackend(), settings, clock=lambda: NOW)
    recommender.backend.load_adapter("clicks@1", "/adapters/clicks")
    recommender.precompute("fan")  # the base model's scores
    assert set(sources(recommender.recommend(FeedRequest("fan", k=3, explain=False)))) == {"llm"}
    tuned = recommender.recommend(FeedRequest("fan", k=3, explain=False, adapter="clicks@1"))
    assert set(sources(tuned)) == {"none"}  # not comparable: another adapter's scores are not this one's
    recommender.precompute("fan", "clicks@1")
    assert set(sources(recommender.recommend(FeedRequest("fan", k=3, explain=False, adapter="clicks@1")))) == {"llm"}


class Down(FakeBackend):
    def score(self, requests):
        raise BackendError("the LLM replicas did not answer")


def test_with_the_llm_down_feeds_go_on_and_the_task_is_retried_after_its_lease(corpus_store, feedback, settings):
    read_sports(feedback)
    now = [NOW]
    service = Newsrank(settings, corpus_store, feedback, Down(), clock=lambda: now[0])
    feed = service.recommend(FeedRequest("fan", k=4, explain=False))
    assert sources(feed) == ["none"] * 4 and not feed.degraded
    scorer = Scorer(service.recommender, "w")
    assert scorer.run_once().subject == "fan"  # it failed ...
    assert service.tally.get("scoring_tasks", kind="reader", outcome="failed") == 1
    assert scorer.run_once() is None  # ... and is not retried in a tight loop
    assert service.recommend(FeedRequest("fan", k=4, explain=False)).items  # feeds still answer
    now[0] += settings.scoring_lease_seconds + 1
    service.backend = service.recommender.backend = FakeBackend()  # the LLM is back
    assert scorer.run_once().subject == "fan" and service.feedback.scoring_queue() == {}
    assert set(sources(service.recommend(FeedRequest("fan", k=4, explain=False)))) == {"llm"}


class Stuck(FakeBackend):
    """An LLM that does not answer until it is let go."""

    def __init__(self):
        super().__init__()
        self.entered, self.release = threading.Event(), threading.Event()

    def score(self, requests):
        self.entered.set()
        assert self.release.wait(60)
        return super().score(requests)


def test_a_slow_llm_holds_up_no_feed_and_no_event(corpus_store, feedback, settings):
    read_sports(feedback)
    backend = Stuck()
    service = Newsrank(settings, corpus_store, feedback, backend, clock=lambda: NOW)
    service.recommend(FeedRequest("fan", k=3, explain=False))
    workers = ScoringWorkers(service.recommender, 1)
    workers.start()
    try:
        assert backend.entered.wait(30)  # the worker is inside the model, which does not answer
        # a feed, events and a new reader's feed all answer while the model is stuck (else: the test hangs)
        assert service.recommend(FeedRequest("fan", k=3, explain=False)).items
        assert service.add_events([{"user_id": "fan", "article_id": "s4", "type": "click"}]) == 1
        assert service.recommend(FeedRequest("newcomer", k=3, explain=False)).items
        assert not backend.release.is_set()
    finally:
        backend.release.set()
        workers.stop()


def test_fresh_feeds_wait_for_the_model_within_bounds_and_others_never(service):
    stuck = Stuck()
    service.backend = service.recommender.backend = stuck
    service.model_slots = ModelSlots(concurrent=1, waiting=0, wait_seconds=5)
    with TestClient(app=create_app(newsrank=service)) as client, ThreadPoolExecutor(1) as pool:
        holding = pool.submit(client.post, "/v1/feed", json={"user_id": "fan", "fresh": True}, headers=AUTH)
        assert stuck.entered.wait(30)  # the model is busy with that one
        busy = client.post("/v1/feed", json={"user_id": "fan", "fresh": True}, headers=AUTH)
        assert busy.status_code == 429 and int(busy.headers["Retry-After"]) >= 1
        tuned = client.post("/v1/feed", json={"user_id": "fan", "adapter": "x@1"}, headers=AUTH)
        assert tuned.status_code == 429  # an adapter other than the configured one is scored now, too
        cached = client.post("/v1/feed", json={"user_id": "fan", "k": 3}, headers=AUTH)
        assert cached.status_code == 200 and {i["relevance_source"] for i in cached.json()["items"]} == {"none"}
        assert client.post("/v1/feed", json={"user_id": "new", "k": 3}, headers=AUTH).status_code == 200
        stuck.release.set()
        assert holding.result().status_code == 200


# -- the queue in the service ------------------------------------------------------------------------------------
def test_the_queue_is_bounded_and_the_sweep_asks_again(corpus_store, feedback, settings):
    settings = settings.model_copy(update={"scoring_queue_max": 3})
    service = Newsrank(settings, corpus_store, feedback, FakeBackend(), clock=lambda: NOW)
    for i in range(5):
        read_sports(feedback, f"r{i}")
        service.recommend(FeedRequest(f"r{i}", k=2, explain=False))
    assert service.feedback.scoring_queue()["reader"][0] == 3 and service.tally.get("scoring_dropped") == 2
    assert work(service) == 3  # the most recently active three
    assert work(service) == 2  # the sweep found the two dropped readers active and unscored
    assert service.feedback.last_scored(service.recommender.scorer(None), [f"r{i}" for i in range(5)]).keys() == {
        f"r{i}" for i in range(5)
    }


def test_the_sweep_renews_old_scores_of_active_readers_only(corpus_store, feedback, settings):
    now = [NOW]
    service = Newsrank(settings, corpus_store, feedback, FakeBackend(), clock=lambda: now[0])
    read_sports(feedback, "active")
    feedback.add_events([Event("idle", a, "click", NOW - 3 * 86400) for a in ("s1", "s2")])
    for user in ("active", "idle"):
        service.recommender.precompute(user)
    scorer = Scorer(service.recommender, "w")
    assert scorer.sweep() == 0  # both were just scored
    now[0] += settings.score_ttl_seconds + 1
    assert scorer.sweep() == 1  # the idle reader is left alone
    assert service.feedback.claim_scoring("w", now[0], 60).subject == "active"


def test_new_articles_ask_for_active_readers_scoring(service):
    service.recommend(FeedRequest("fan", k=3, explain=False))
    work(service)
    service.upsert_articles([{"id": "s99", "title": "Hawks sign a new striker", "category": "sports"}])
    assert service.feedback.scoring_queue()["reader"][0] == 1
    assert "none" in sources(service.recommend(FeedRequest("fan", k=12, explain=False)))  # s99 is new to it


def test_workers_in_two_services_on_one_store_score_each_reader_once(corpus_store, feedback, settings, tmp_path):
    from store import open_store

    readers = [f"r{i}" for i in range(6)]
    for i, user in enumerate(readers):  # idle for days: only the asks below bring them to the scorer, not its sweep
        read = ("s1", f"s{i + 2}")  # each a profile of their own: readers alike would share their scores
        feedback.add_events([Event(user, a, "click", NOW - 3 * 86400) for a in read])
    backends = [FakeBackend(), FakeBackend()]
    services = [
        Newsrank(settings, corpus_store, store, backend, clock=lambda: NOW)
        for store, backend in zip((feedback, open_store(feedback.url)), backends, strict=True)
    ]
    services[0].recommender.ask_scoring([ScoringTask("reader", u, NOW) for u in readers])
    workers = [ScoringWorkers(s.recommender, 2, name=f"instance{i}") for i, s in enumerate(services)]
    for w in workers:
        w.start()
    try:
        deadline = threading.Event()
        for _ in range(600):
            if not services[0].feedback.scoring_queue():
                break
            deadline.wait(0.05)
    finally:
        for w in workers:
            w.stop()
    assert services[0].feedback.scoring_queue() == {}
    assert len(backends[0].calls) + len(backends[1].calls) == len(readers)  # each reader once, by some worker


# -- explanations without the wait -----------------------------------------------------------------------------
def test_the_feed_explains_from_the_template_and_the_llm_rewrite_lands_on_the_record(corpus_store, feedback, settings):
    read_sports(feedback)
    backend = FakeBackend()
    service = Newsrank(settings, corpus_store, feedback, backend, clock=lambda: NOW)
    feed = service.recommend(FeedRequest("fan", k=4))
    assert backend.calls == []  # no model in the request
    top = [i.record for i in feed.items[:3]]
    assert all(r.explanation_source == "template" and r.explanation.startswith("Recommended because") for r in top)
    assert service.feedback.scoring_queue()["explain"][0] == 1
    facts = top[0].grounded_in
    title = next(f for f in facts if f.startswith("read: "))[7:-1]
    interests = " and ".join(f.removeprefix("interest: ") for f in facts if f.startswith("interest: "))
    faithful = f"you follow {interests} and read {title}."
    vague = f"you follow {interests}."  # drops the title the template names: less specific, not kept
    scorer = Scorer(service.recommender, "w")
    backend.replies = [vague, "you might enjoy it.", "you might enjoy it."]
    assert scorer.rewrite("fan") == 0
    assert [i.explanation for i in service.feedback.ranking(feed.ranking_id).items[:3]] == [r.explanation for r in top]
    backend.replies = [faithful, "you might enjoy it.", "you might enjoy it."]
    assert scorer.rewrite("fan") == 1
    stored = service.feedback.ranking(feed.ranking_id).items
    assert (stored[0].explanation, stored[0].explanation_source) == (f"You may like this because {faithful}", "llm")
    assert stored[1].explanation == top[1].explanation and stored[1].explanation_source == "template"
    assert service.tally.get("explanation_rewrites", outcome="kept") == 1
    assert service.tally.get("explanation_rewrites", outcome="rejected") == 5
    assert f"Explanation shown (llm): You may like this because {faithful}" in service.why("fan", stored[0].article_id)


def test_a_rewrite_for_an_erased_reader_is_dropped(service):
    service.recommend(FeedRequest("fan", k=3))
    service.delete_user("fan")
    assert service.feedback.scoring_queue() == {}
    assert Scorer(service.recommender, "w").rewrite("fan") == 0


def test_why_says_where_the_relevance_came_from(service):
    feed = service.recommend(FeedRequest("fan", k=3, explain=False))
    answer = service.why("fan", feed.items[0].article.id, feed.ranking_id)
    scaled = without(service.settings.weights.frozen(), "relevance")  # what the blend used for this item
    assert "Relevance: not computed yet" in answer and "weight 0\n" in answer
    assert f"to the reader's profile), weight {scaled['similarity']:.3g}\n" in answer
    work(service)
    warm = service.recommend(FeedRequest("fan", k=3, explain=False))
    assert "Relevance: the LLM's, under the profile" in service.why("fan", warm.items[0].article.id, warm.ranking_id)


# -- the real packaged LLM -------------------------------------------------------------------------------------
def test_a_warm_feed_ranks_as_the_synchronous_path_does_on_the_real_llm(corpus_store, feedback, settings, llm):
    read_sports(feedback)
    feedback.set_preferences("fan", Preferences(("football",)), NOW)
    recommender = Recommender(corpus_store, feedback, llm, settings, clock=lambda: NOW)
    assert recommender.precompute("fan") == 12  # what the background scorer runs
    warm = recommender.recommend(FeedRequest("fan", k=8, explain=False))
    fresh = recommender.recommend(FeedRequest("fan", k=8, explain=False, fresh=True))
    assert sources(warm) == ["llm"] * 8 and sources(fresh) == ["llm"] * 8
    assert [i.article.id for i in warm.items] == [i.article.id for i in fresh.items]
    warm_relevance = [i.record.signals["relevance"] for i in warm.items]
    assert warm_relevance == pytest.approx([i.record.signals["relevance"] for i in fresh.items], abs=1e-5)
    assert len(set(round(r, 3) for r in warm_relevance)) > 1  # the model told the candidates apart


def test_only_what_the_current_profile_has_not_scored_is_scored(service):
    assert service.recommender.precompute("fan") == 12
    assert service.recommender.precompute("fan") == 0  # nothing changed: nothing to do
    service.upsert_articles([{"id": "s99", "title": "Hawks sign a new striker", "category": "sports"}])
    assert service.recommender.precompute("fan") == 1  # the new article alone
    service.add_events([{"user_id": "fan", "article_id": "s4", "type": "click"}])
    assert service.recommender.precompute("fan") >= 11  # a new profile: every candidate again


def test_the_ttl_renews_scores_that_nothing_else_changed(corpus_store, feedback, settings):
    read_sports(feedback)
    now = [NOW]
    service = Newsrank(settings, corpus_store, feedback, FakeBackend(), clock=lambda: now[0])
    assert service.recommender.precompute("fan") == 12
    now[0] += settings.score_ttl_seconds + 1
    scorer = Scorer(service.recommender, "w")
    assert scorer.sweep() == 1 and scorer.run_once().subject == "fan"
    assert service.backend.calls == ["score:12", "score:12"]  # renewed, so the next sweep has nothing to ask
    assert scorer.sweep() == 0


# -- chat about what the feed does not show -------------------------------------------------------------------
def ask(service, ranking_id, question):
    from chat.conversation import Message

    return service.chat.answer("fan", [Message("user", question)], ranking_id)


def test_why_not_answers_from_the_profile_the_feed_and_the_articles(service):
    feed = service.recommend(FeedRequest("fan", k=12, explain=False))
    food = [i for i in feed.items if i.article.category == "food"]
    reply = ask(service, feed.ranking_id, "Why don't I see more food?")
    assert reply.intent == "why-not" and reply.source == "record"
    assert "You have not read anything in food yet" in reply.text and reply.facts["share_of_reading"] == 0
    assert reply.facts["fresh_articles"] > 0 and "food articles from the last 7 days" in reply.text
    assert reply.facts["in_feed"] == [i.record.position for i in food]
    assert 'Say "more about food"' in reply.text
    sports = ask(service, feed.ranking_id, "why no sports?")
    assert sports.facts["share_of_reading"] == 1.0 and "Sports is 100% of your reading." in sports.text
    service.set_preferences("fan", mutes=["politics"])
    muted = ask(service, feed.ranking_id, "Why don't I see more politics?")
    assert muted.facts["muted"] and muted.text.startswith('You muted "politics"')
    assert ask(service, feed.ranking_id, "why no astrology?").facts["fresh_articles"] == 0


def test_why_not_names_what_ranks_just_below_the_cut_and_stores_nothing(service):
    feed = service.recommend(FeedRequest("fan", k=3, explain=False))
    rankings = service.feedback.count_rows("rankings")
    below = [p for p, a in service.standings("fan") if a.category == "food" and p > 3][:3]
    reply = ask(service, feed.ranking_id, "Why don't I see more food?")
    assert below and reply.facts["below_the_cut"] == below
    assert f"Just below the cut, ranked now: #{below[0]} " in reply.text
    assert service.feedback.count_rows("rankings") == rankings  # a look, not a feed: no record


def test_a_readers_most_promising_candidates_are_scored_first(service):
    """In parts of RESCORE_FIRST: the first part holds what tops the feed on the other signals, the later parts
    none of it, whatever order the store gives the candidates in."""
    recommender = service.recommender
    recommender.settings = recommender.settings.model_copy(update={"rescore_first": 5})
    found = recommender.candidates  # the store's order turned around: the order of the parts must be the scorer's
    recommender.candidates = lambda *args, **kwargs: found(*args, **kwargs)[::-1]
    unscored = service.recommend(FeedRequest("fan", k=3, explain=False))
    parts, score = [], service.backend.score
    service.backend.score = lambda requests: parts.append([r.suffix for r in requests]) or score(requests)
    assert recommender.precompute("fan") == 12
    assert [len(p) for p in parts] == [5, 5, 2]
    top = [" ".join(i.article.title.split()[:4]) for i in unscored.items]  # a candidate's text may be shortened
    assert all(any(suffix.startswith(t) for suffix in parts[0]) for t in top)
    assert not any(suffix.startswith(t) for suffix in parts[1] + parts[2] for t in top)
