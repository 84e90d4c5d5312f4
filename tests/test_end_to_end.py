"""The whole loop on the real packaged LLM, real Chroma and real SQLite."""

import re

import pytest

from core.records import Event
from feed.recommender import FeedRequest, Recommender
from serve.service import Newsrank
from serve.worker import ScoringWorkers
from tests.conftest import NOW


def test_a_sports_reader_gets_sports_first_with_explanations_that_cite_the_history(
    corpus_store, feedback, settings, llm
):
    feedback.add_events(
        [Event("fan", a, "click", NOW - 3600) for a in ("s1", "s2", "s3")]
        + [Event("fan", "p1", "skip", NOW - 3000), Event("fan", "s2", "like", NOW - 2000)]
    )
    service = Newsrank(settings, corpus_store, feedback, llm, clock=lambda: NOW)
    first = service.recommend(FeedRequest("fan", k=8, explain=True))  # at once, the LLM not yet heard from
    assert {i.record.relevance_source for i in first.items} == {"none"}
    assert ScoringWorkers(service.recommender, 1).run_until_idle() == 2  # the reader's scores; the rewrites
    feed = service.recommend(FeedRequest("fan", k=8, explain=True))
    assert {i.record.relevance_source for i in feed.items} == {"llm"}
    categories = [i.article.category for i in feed.items]
    assert categories[:3] == ["sports"] * 3, categories
    sports_positions = [p for p, c in enumerate(categories) if c == "sports"]
    other_positions = [p for p, c in enumerate(categories) if c != "sports"]
    assert sum(sports_positions) / len(sports_positions) < sum(other_positions) / len(other_positions)

    history_titles = [corpus_store.get([a])[a].article.title for a in ("s1", "s2", "s3")]
    for item in feed.items[:3]:
        record = item.record
        assert record.explanation and record.explanation_source in ("llm", "template")
        assert record.grounded_in, "each explanation rests on a profile fact"
        cited = re.search(r"\b(sports|football|basketball)\b", record.explanation.lower()) or any(
            t in record.explanation for t in history_titles
        )
        assert cited, record.explanation
    assert all(i.record.explanation is None for i in feed.items[3:])

    # the stored record answers "why?" with the same numbers
    top = feed.items[0].record
    answer = service.why("fan", top.article_id, feed.ranking_id)
    assert f"#1 of {len(feed.items)}" in answer and f"{top.signals['relevance']:.2f}" in answer and "smollm2" in answer
    assert top.title in answer


def test_the_llm_relevance_is_read_from_first_token_logits(corpus_store, feedback, settings, llm):
    feedback.add_events([Event("fan", a, "click", NOW - 3600) for a in ("s1", "s2")])
    recommender = Recommender(corpus_store, feedback, llm, settings, clock=lambda: NOW)
    feed = recommender.recommend(FeedRequest("fan", k=5, explain=False, fresh=True))
    relevances = [i.record.signals["relevance"] for i in feed.items]
    assert all(0.0 < y < 1.0 for y in relevances) and len(set(relevances)) > 1


def test_listwise_strategy_on_the_real_llm(corpus_store, feedback, settings, llm):
    feedback.add_events([Event("fan", a, "click", NOW - 3600) for a in ("s1", "s2")])
    listwise = settings.model_copy(
        update={"strategy": "listwise", "candidates": 6, "listwise_window": 4, "listwise_step": 2}
    )
    recommender = Recommender(corpus_store, feedback, llm, listwise, clock=lambda: NOW)
    feed = recommender.recommend(FeedRequest("fan", k=6, explain=False, fresh=True))
    relevances = sorted(i.record.signals["relevance"] for i in feed.items)
    assert relevances == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])  # a full permutation, whatever it wrote
    assert feedback.ranking(feed.ranking_id).strategy == "listwise"
