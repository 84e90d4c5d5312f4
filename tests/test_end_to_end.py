"""The whole loop on the real packaged LLM, real Chroma and real SQLite."""

import contextlib
import re

import pytest

from core.records import Event
from feed.recommender import FeedRequest, Recommender
from llm.listwise import listwise_rank, parse_permutation, rank_scores, sliding_windows
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
    """Each served relevance is σ(logit Yes − logit No) of the answer's first token, for the candidate's whole
    prompt run through the model on its own (no shared prefix, no packing): the feed's shortcuts change nothing."""
    import torch

    from core.llm import ANSWER_NO, ANSWER_YES
    from llm.relevance import relevance_requests

    feedback.add_events([Event("fan", a, "click", NOW - 3600) for a in ("s1", "s2")])
    recommender = Recommender(corpus_store, feedback, llm, settings, clock=lambda: NOW)
    feed = recommender.recommend(FeedRequest("fan", k=5, explain=False, fresh=True))
    requests = relevance_requests(llm, feed.profile_text, [i.article for i in feed.items], text=settings.candidate_text)
    yes, no = (llm.tokenizer(w, add_special_tokens=False).input_ids[0] for w in (ANSWER_YES, ANSWER_NO))
    model = llm.network  # the base model: another test may have loaded adapters into this session's model
    for item, request in zip(feed.items, requests, strict=True):
        ids = llm.tokenizer(request.prompt, add_special_tokens=False, return_tensors="pt").input_ids
        base = model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()
        with torch.no_grad(), base:
            logits = model(input_ids=ids).logits[0, -1]
        expected = torch.sigmoid(logits[yes] - logits[no]).item()
        assert item.record.signals["relevance"] == pytest.approx(expected, abs=1e-4)
    assert len({round(i.record.signals["relevance"], 4) for i in feed.items}) > 1


def test_listwise_strategy_on_the_real_llm(corpus_store, feedback, settings, llm):
    feedback.add_events([Event("fan", a, "click", NOW - 3600) for a in ("s1", "s2")])
    listwise = settings.model_copy(
        update={"strategy": "listwise", "candidates": 6, "listwise_window": 4, "listwise_step": 2}
    )
    written: list[str] = []

    class Recording:  # the real model, with what it wrote kept
        def __getattr__(self, name):
            return getattr(llm, name)

        def generate(self, requests):
            generations = llm.generate(requests)
            written.extend(g.text for g in generations)
            return generations

    recommender = Recommender(corpus_store, feedback, Recording(), listwise, clock=lambda: NOW)
    feed = recommender.recommend(FeedRequest("fan", k=6, explain=False, fresh=True))
    assert feedback.ranking(feed.ranking_id).strategy == "listwise"
    # the relevances are the permutation the model's own words give, window by window (repaired where needed)
    hits = recommender.candidates(recommender.profile("fan"))
    texts = iter(written)
    order, _ = listwise_rank(len(hits), lambda window: parse_permutation(next(texts), len(window)), 4, 2)
    expected = dict(zip((h.article.id for h in hits), rank_scores(order), strict=True))
    assert {i.article.id: i.record.signals["relevance"] for i in feed.items} == pytest.approx(
        {a: expected[a] for a in (i.article.id for i in feed.items)}
    )
    assert next(texts, None) is None and len(written) == len(sliding_windows(len(hits), 4, 2))
