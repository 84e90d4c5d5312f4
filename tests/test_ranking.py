"""The ranking loop around the model, with a fake LLM (the real one is in test_end_to_end.py)."""

import math

import pytest

from core.errors import EmptyStore, InvalidInput, NotFound
from core.records import Event, Preferences
from feed.recommender import FeedRequest, Recommender
from llm.backends.fake import FakeBackend
from llm.relevance import CANDIDATE_TEXTS, candidate_text, relevance_requests
from retrieval.store import ChromaArticleStore, chroma_client
from tests.conftest import NOW


@pytest.fixture
def recommender(corpus_store, feedback, settings):
    return Recommender(corpus_store, feedback, FakeBackend(), settings, clock=lambda: NOW)


def read_sports(feedback, user="fan"):
    feedback.add_events([Event(user, a, "click", NOW - 3600) for a in ("s1", "s2", "s3")])


def test_a_sports_reader_gets_unseen_sports_first_and_the_record_is_stored(recommender, feedback):
    read_sports(feedback)
    feed = recommender.recommend(FeedRequest("fan", k=6))
    ids = [i.article.id for i in feed.items]
    assert not feed.cold_start and len(ids) == 6
    assert {"s1", "s2", "s3"}.isdisjoint(ids)  # already read
    assert [i.article.category for i in feed.items[:3]] == ["sports"] * 3
    scores = [i.record.score for i in feed.items]
    assert all(0 <= i.record.signals["relevance"] <= 1 and 0 <= i.record.signals["affinity"] <= 1 for i in feed.items)
    assert [i.record.position for i in feed.items] == [1, 2, 3, 4, 5, 6]
    stored = feedback.ranking(feed.ranking_id)
    assert [i.article_id for i in stored.items] == ids and [i.score for i in stored.items] == scores
    assert stored.backend == "fake" and stored.strategy == "pointwise" and "Recently read" in stored.profile_text
    assert set(feed.timings) >= {"profile", "candidates", "relevance", "blend", "explain", "total"}


def test_explanations_use_the_llm_when_grounded_and_the_template_otherwise(corpus_store, feedback, settings):
    read_sports(feedback)
    reply = "you follow sports and football and read how Quarterback Dan Miller throws four touchdowns."
    backend = FakeBackend(replies=[reply, "it has dragons.", "you might enjoy it"])
    recommender = Recommender(corpus_store, feedback, backend, settings, clock=lambda: NOW)
    feed = recommender.recommend(FeedRequest("fan", k=5, fresh=True))  # the LLM writes while the request waits
    records = [i.record for i in feed.items]
    assert records[0].grounded_in == (
        "interest: sports", "interest: football",
        'read: "Quarterback Dan Miller throws four touchdowns as Hawks clinch division"',
    )  # fmt: skip
    assert records[0].explanation == f"You may like this because {reply}"
    assert records[0].explanation_source == "llm"
    assert [r.explanation_source for r in records[1:3]] == ["template", "template"]
    assert records[1].explanation.startswith("Recommended because")
    assert all(r.explanation is None for r in records[3:])  # explain_top = 3
    assert all(r.grounded_in for r in records[:3])


def test_no_explanations_when_not_asked(recommender, feedback):
    read_sports(feedback)
    feed = recommender.recommend(FeedRequest("fan", k=3, explain=False))
    assert all(i.record.explanation is None for i in feed.items)
    assert not any(c.startswith("generate") for c in recommender.backend.calls)


def test_mutes_and_category_filters(recommender, feedback):
    read_sports(feedback)
    feedback.set_preferences("fan", Preferences(mutes=("politics", "recipes")), NOW)
    feed = recommender.recommend(FeedRequest("fan", k=13))
    assert all(i.article.category != "politics" for i in feed.items)
    assert "f1" not in [i.article.id for i in feed.items]  # muted subcategory
    only_food = recommender.recommend(FeedRequest("fan", k=5, categories=("food",)))
    assert {i.article.id for i in only_food.items} == {"f2", "f3"}


def test_a_new_reader_gets_a_fresh_popular_feed_without_the_llm(recommender, feedback):
    feedback.add_events([Event(f"other{i}", "t3", "click", NOW - 600) for i in range(5)])
    feedback.add_events([Event(f"other{i}", "f2", "like", NOW - 600) for i in range(2)])
    feedback.add_events([Event(f"other{i}", "p3", "click", NOW - 30 * 86400) for i in range(9)])  # long ago
    feed = recommender.recommend(FeedRequest("never-seen", k=5))
    assert feed.cold_start and recommender.backend.calls == []
    assert feed.items[0].article.id == "t3" and feed.items[0].record.signals["relevance"] == 1.0  # the most clicked
    relevance = {i.article.id: i.record.signals["relevance"] for i in feed.items}
    assert relevance["f2"] == pytest.approx(math.log1p(2) / math.log1p(5))
    assert relevance.get("p3", 0.0) == 0.0  # popularity counts the last two half-lives only
    categories = [i.article.category for i in feed.items]
    assert len(set(categories)) >= 3  # diverse
    assert feedback.ranking(feed.ranking_id).strategy == "popularity"


def test_an_empty_recency_window_widens_instead_of_returning_nothing(corpus_store, feedback, settings):
    late = Recommender(corpus_store, feedback, FakeBackend(), settings, clock=lambda: NOW + 365 * 86400)
    read_sports(feedback)
    assert len(late.recommend(FeedRequest("fan", k=4)).items) == 4


def test_bad_requests(recommender, feedback, settings, embedder, tmp_path):
    empty = ChromaArticleStore(chroma_client(tmp_path / "empty"), embedder, "empty")
    with pytest.raises(InvalidInput):
        FeedRequest("u", k=0)
    with pytest.raises(InvalidInput):
        FeedRequest(" ", k=5)
    with pytest.raises(EmptyStore):
        Recommender(empty, feedback, FakeBackend(), settings).recommend(FeedRequest("u"))
    read_sports(feedback)
    with pytest.raises(NotFound):
        recommender.recommend(FeedRequest("fan", adapter="not-loaded", fresh=True))


def test_a_named_adapter_reaches_the_backend_and_the_record(recommender, feedback):
    read_sports(feedback)
    recommender.backend.load_adapter("clicks-v1", "/adapters/clicks-v1")
    plain = recommender.recommend(FeedRequest("fan", k=3, explain=False, fresh=True))
    tuned = recommender.recommend(FeedRequest("fan", k=3, explain=False, adapter="clicks-v1", fresh=True))
    assert feedback.ranking(tuned.ranking_id).adapter == "clicks-v1"
    assert feedback.ranking(plain.ranking_id).adapter is None
    assert tuned.items[0].record.signals["relevance"] > plain.items[0].record.signals["relevance"] - 1e-9


def test_prompts_share_one_prefix_and_end_where_the_answer_starts(recommender, corpus_store):
    articles = [corpus_store.get(["s4"])["s4"].article, corpus_store.get(["f1"])["f1"].article]
    requests = relevance_requests(recommender.backend, "Interests: sports.", articles)
    # relevance.v2: the question in the shared prefix, never in a candidate's suffix
    assert requests[0].prefix == requests[1].prefix
    assert requests[0].prefix.endswith("would this reader click each article below?\n")
    # candidate.v3: the article's own text, cut, and the answer cue; nothing else
    assert requests[0].suffix == "Hawks coach praises defense before Sunday's… ->"
    assert "Answer" not in requests[0].suffix and "Interests" not in requests[0].suffix
    assert requests[0].prompt == requests[0].prefix + requests[0].suffix


def test_candidate_texts_cut_to_one_budget_and_name_the_category_when_asked(corpus_store):
    article = corpus_store.get(["s4"])["s4"].article
    assert candidate_text(article, "title+category").startswith(f"{article.category}: Hawks coach")
    for text in CANDIDATE_TEXTS:
        assert len(candidate_text(article, text)) <= 80 and candidate_text(article, text).endswith(" ->")
    with pytest.raises(InvalidInput):
        candidate_text(article, "abstract")


def test_listwise_strategy_reads_the_permutation(corpus_store, feedback, settings):
    read_sports(feedback)
    listwise = settings.model_copy(update={"strategy": "listwise", "candidates": 4, "explore_share": 0.0})
    backend = FakeBackend(replies=["[4] > [3] > [2] > [1]"])
    feed = Recommender(corpus_store, feedback, backend, listwise, clock=lambda: NOW).recommend(
        FeedRequest("fan", k=4, explain=False, fresh=True)
    )
    relevance = sorted(i.record.signals["relevance"] for i in feed.items)
    assert relevance == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0]) and backend.calls == ["generate:1"]
