"""Offline evaluation: the replay logic with a fake LLM, and the command end to end with the real one."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core import metrics
from core.errors import InvalidInput
from core.records import SIGNALS, BlendWeights
from evaluation import replay
from feed.learned_ranker import Ranker
from llm.backends.fake import FakeBackend

MIND = Path(__file__).parent / "fixtures" / "mind"


@pytest.fixture
def corpus(embedder, tmp_path):
    return replay.Corpus(MIND / "news.tsv", embedder, tmp_path / "cache", show_progress=False)


@pytest.fixture
def impressions():
    return replay.read_behaviors(MIND / "behaviors.tsv")[0]


class CountingBackend(FakeBackend):
    """The fake LLM, counting candidates scored; it can be told to fail after some calls."""

    def __init__(self, fail_after: int | None = None) -> None:
        super().__init__()
        self.scored = 0
        self.fail_after = fail_after

    def score(self, requests):
        if self.fail_after is not None and len([c for c in self.calls if c.startswith("score")]) >= self.fail_after:
            raise KeyboardInterrupt
        self.scored += len(requests)
        return super().score(requests)


def test_behaviors_are_read_and_bad_rows_reported(impressions):
    read, errors = replay.read_behaviors(MIND / "behaviors.tsv")
    assert len(read) == 12 and [e.line for e in errors] == [13, 14]
    first = read[0]
    assert first.history == ("N1", "N2", "N3") and first.labels == (1, 0, 0, 0, 1, 0) and first.time is None
    with pytest.raises(InvalidInput):
        replay.read_behaviors(MIND / "missing.tsv")


def test_the_split_is_seeded_disjoint_and_complete(impressions):
    tune = replay.select(impressions, "tune", 0, None)
    held = replay.select(impressions, "heldout", 0, None)
    assert {i.id for i in tune}.isdisjoint(i.id for i in held) and len(tune) + len(held) == len(impressions)
    assert replay.select(impressions, "tune", 0, None) == tune
    assert replay.select(impressions, "tune", 1, None) != tune  # another seed, another split
    assert len(replay.select(impressions, "all", 0, 5)) == 5
    assert replay.select(impressions, "all", 0, 2, skip=3) == impressions[3:5]


def test_contexts_use_history_as_profile_and_leave_one_out_popularity(corpus, impressions):
    contexts = {c.impression.id: c for c in replay.contexts(impressions, corpus)}
    first = contexts["1"]
    assert [h.article_id for h in first.profile.history] == ["N3", "N2", "N1"]  # newest (last column) first
    assert first.profile.category_shares == {"sports": 1.0}
    # N7 is clicked in impressions 1 and 9: for impression 1 only the click in 9 counts
    n7 = [h.article.id for h in first.hits].index("N7")
    assert first.popularity[n7] > 0
    nine = contexts["9"]
    assert "NX99" not in [h.article.id for h in nine.hits]  # unknown news are dropped from scoring
    assert contexts["10"].profile.cold_start


def test_run_scores_every_method_and_resumes_after_an_interruption(corpus, impressions, tmp_path):
    methods = ["random", "popularity", "category", "embedding", "llm", "blend"]
    interrupted = replay.Evaluator(CountingBackend(fail_after=4), BlendWeights())
    with pytest.raises(KeyboardInterrupt):
        replay.run(impressions, corpus, interrupted, methods, tmp_path / "c", "fake", show_progress=False)
    assert interrupted.backend.scored > 0
    cache_file = next((tmp_path / "c").glob("llm-*.jsonl"))
    assert len(cache_file.read_text().splitlines()) == 4  # what was done is kept

    resumed = replay.Evaluator(CountingBackend(), BlendWeights())
    rows, prepared = replay.run(impressions, corpus, resumed, methods, tmp_path / "c", "fake", show_progress=False)
    assert len(prepared) == 12 and all(len(rows[m]) == 12 for m in methods)
    assert resumed.backend.calls.count("score:6") + resumed.backend.calls.count("score:5") == 8  # only the rest

    again = replay.Evaluator(CountingBackend(), BlendWeights())
    rows_again, _ = replay.run(impressions, corpus, again, methods, tmp_path / "c", "fake", show_progress=False)
    assert again.backend.scored == 0 and rows_again == rows  # fully cached, and deterministic

    fresh = replay.Evaluator(CountingBackend(), BlendWeights())
    rows_fresh, _ = replay.run(impressions, corpus, fresh, methods, tmp_path / "other", "fake", show_progress=False)
    assert all(rows_fresh[m][i]["scores"] == rows[m][i]["scores"] for m in methods for i in rows[m])

    reports = {m: replay.summarize(m, rows[m], prepared) for m in methods}
    assert reports["category"].auc > 80 and reports["embedding"].auc > 70  # the fixture is easy by design
    assert 20 < reports["random"].auc < 80
    assert all(0 <= r.ndcg10 <= 100 and r.coverage >= 1 for r in reports.values())


def test_unknown_methods_and_a_missing_adapter_are_refused(corpus, impressions, tmp_path):
    evaluator = replay.Evaluator(FakeBackend(), BlendWeights())
    with pytest.raises(InvalidInput):
        replay.run(impressions, corpus, evaluator, ["magic"], tmp_path, "fake", show_progress=False)
    with pytest.raises(InvalidInput):
        replay.run(impressions, corpus, evaluator, ["llm+adapter"], tmp_path, "fake", show_progress=False)


def test_predictions_rank_unknown_candidates_last(corpus, impressions, tmp_path):
    evaluator = replay.Evaluator(None, BlendWeights())
    rows, prepared = replay.run(impressions, corpus, evaluator, ["category"], tmp_path, "-", show_progress=False)
    path = tmp_path / "predictions.txt"
    replay.write_predictions(path, rows["category"], prepared)
    lines = dict(line.split(" ", 1) for line in path.read_text().splitlines())
    assert len(lines) == 12
    ranks9 = json.loads(lines["9"])
    assert sorted(ranks9) == [1, 2, 3, 4, 5, 6] and ranks9[5] == 6  # NX99, unknown, is last


def test_fitted_weights_fill_the_budget(corpus, impressions, tmp_path):
    evaluator = replay.Evaluator(FakeBackend(), BlendWeights())
    rows, prepared = replay.run(impressions, corpus, evaluator, ["llm"], tmp_path, "fake", show_progress=False)
    fitted = replay.fit_weights(evaluator, rows["llm"], prepared, BlendWeights(diversity=0.1, freshness=0.2))
    assert (fitted["diversity"], fitted["freshness"]) == (0.1, 0.2)
    total = sum(fitted[spec.name] for spec in SIGNALS if spec.fitted)
    assert total == pytest.approx(0.7, abs=0.01) and fitted["affinity"] > 0


def test_the_eval_command_end_to_end_on_the_real_llm(tmp_path):
    env = {**os.environ, "NEWSRANK_DATA_DIR": str(tmp_path / "data")}
    args = [
        sys.executable, "-m", "serve.cli", "eval", "--news", str(MIND / "news.tsv"),
        "--behaviors", str(MIND / "behaviors.tsv"), "--method", "blend,random,popularity,category,embedding,llm",
        "--explain", "1", "--predictions", str(tmp_path / "out" / "pred.txt"), "--report", str(tmp_path / "out" / "r.md"),
    ]  # fmt: skip
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    assert "2 malformed rows skipped" in done.stdout and "12 impressions evaluated" in done.stdout
    report = (tmp_path / "out" / "r.md").read_text()
    main, exposure = report.split("#### Exposure of the top 10")
    rows = [line for line in main.splitlines() if line.startswith("| ") and "method" not in line]
    assert [r.split("|")[1].strip() for r in rows] == ["blend", "random", "popularity", "category", "embedding", "llm"]
    gini = [float(v) for v in next(r for r in exposure.splitlines() if r.startswith("| Gini")).split("|")[2:-1]]
    assert len(gini) == 6 and all(0 < g < 1 for g in gini)
    # these impressions have at most 10 candidates: every method shows them all, so exposure equals the offer
    first = next(r for r in exposure.splitlines() if r.startswith("| ") and "%) |" in r)
    offered = first.split("(")[1].split("%")[0]
    assert [c.strip() for c in first.split("|")[2:-1]] == [f"{offered}%"] * 6
    segments = exposure.split("#### AUC by reader segment")[1]
    assert "| history < 5 (" in segments or "| history 5-19 (" in segments
    assert "| reads most: " in segments
    llm_row = rows[-1].split("|")
    assert float(llm_row[-3].replace(",", "")) > 0 and float(llm_row[-2]) > 5  # speed and prompt tokens
    assert "passed the grounding check (blend)" in report
    assert (tmp_path / "out" / "r.png").read_bytes()[:4] == b"\x89PNG"
    predictions = (tmp_path / "out" / "pred.txt").read_text().splitlines()
    assert len(predictions) == 12 and predictions[0].startswith("1 [")

    # a learned ranker fitted on these impressions' clicks (the LLM's scores come from the cache), then replayed
    ranker_file = tmp_path / "out" / "ranker.json"
    common = [*args[:4], "--news", str(MIND / "news.tsv"), "--behaviors", str(MIND / "behaviors.tsv")]
    fitted = subprocess.run([*common, "--method", "llm", "--fit-ranker", str(ranker_file)], env=env,
                            capture_output=True, text=True, timeout=900)  # fmt: skip
    assert fitted.returncode == 0, fitted.stderr
    assert "ranker fitted on 12 impressions (llm relevance)" in fitted.stdout
    learned = Ranker.load(ranker_file)
    assert learned.scorer.startswith("smollm2-135m|-|relevance.v2+candidate.v3:") and learned.with_llm is not None
    replayed = subprocess.run([*common, "--method", "ranker,blend", "--ranker", str(ranker_file)], env=env,
                              capture_output=True, text=True, timeout=900)  # fmt: skip
    assert replayed.returncode == 0, replayed.stderr
    table = replayed.stdout.split("#### Exposure")[0]
    assert [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")][1:] == [
        "ranker", "blend"
    ]  # fmt: skip
    missing = subprocess.run([*common, "--method", "ranker"], env=env, capture_output=True, text=True, timeout=900)
    assert missing.returncode == 2 and "needs a ranker file" in missing.stderr


def test_the_blend_under_a_category_cap_spreads_its_top_over_categories(corpus, impressions, tmp_path):
    from collections import Counter

    crowding = {}
    for name, caps in (("free", {}), ("capped", {"category_share": 0.34})):  # at most 2 of 6 from one category
        evaluator = replay.Evaluator(FakeBackend(), BlendWeights(), caps=caps)
        rows, prepared = replay.run(impressions, corpus, evaluator, ["blend"], tmp_path, "fake", show_progress=False)
        tops = [[c.hits[i].article.category for i in metrics.ranking(rows["blend"][c.impression.id]["scores"])[:3]]
                for c in prepared]  # fmt: skip
        crowding[name] = [max(Counter(top).values()) for top in tops]
        report = replay.summarize("blend", rows["blend"], prepared, rows["llm"])
        assert report.exposure.feeds == len(prepared) and report.segments
    assert all(c <= 2 for c in crowding["capped"])
    assert sum(crowding["capped"]) < sum(crowding["free"])


def test_evaluation_ranks_as_the_feed_serves(corpus_store, feedback, settings, tmp_path):
    """The same reader and candidates through the feed (Recommender.rank) and through the offline replay
    (Evaluator): the same signals, the same scorer key, and the same order, with the hand-set weights and with a
    learned ranker keyed on that scorer."""
    from core.records import Event
    from feed import learned_ranker
    from feed.recommender import FeedRequest, Recommender
    from tests.conftest import NOW

    feedback.add_events([Event("fan", a, "click", NOW - 3600 * h) for h, a in enumerate(("s1", "s2", "p1"))])
    feedback.add_events([Event("other", "s4", "click", NOW - 60), Event("third", "s4", "like", NOW - 50),
                         Event("other", "s1", "click", NOW - 70)])  # fmt: skip
    backend = FakeBackend()
    # behaviour read afresh, so that the fan's feed counts the third reader's among the showings
    settings = settings.model_copy(update={"behaviour_cache_seconds": 0})
    recommender = Recommender(corpus_store, feedback, backend, settings, clock=lambda: NOW)
    recommender.recommend(FeedRequest("third", k=8, explain=False))  # shown to a reader: click-through rates
    request = FeedRequest("fan", k=8, explain=False, fresh=True)
    standings = recommender.rank(request)
    hits = standings.hits
    ctx = replay.Context(
        replay.Impression("i", "fan", NOW, (), tuple(h.article.id for h in hits), (0,) * len(hits)),
        recommender.profile("fan"), hits, [0] * len(hits), *recommender.behaviour(recommender.profile("fan"), hits),
        now=NOW,
    )  # fmt: skip
    evaluator = replay.Evaluator(backend, settings.weights.frozen(), model=backend.model,
                                 candidate_text=settings.candidate_text, strategy=settings.strategy,
                                 half_life_hours=settings.half_life_hours)  # fmt: skip
    relevance = [s.relevance for s in standings.signals]
    assert evaluator.scorer == recommender.scorer(None)
    assert evaluator.signals(ctx, relevance) == standings.signals
    # the behaviour signals are in it, not all zero: click counts, rates over readers shown, co-clicks
    assert all(len({getattr(s, name) for s in standings.signals}) > 1 for name in ("popularity", "ctr", "coclick"))

    def evaluated_order() -> list[str]:
        scores, _, _ = evaluator.blend(ctx, relevance, learned=evaluator.ranker is not None)
        return [hits[i].article.id for i in metrics.ranking(scores)][: request.k]

    served = [hits[p.index].article.id for p in standings.placed]
    assert evaluated_order() == served

    # a learned ranker fitted for this scorer: both read its with-LLM fit, and still agree
    rows = [s for s in standings.signals]
    fitted = learned_ranker.fit(rows, [3] * len(rows), [int(i % 3 == 0) for i in range(len(rows))], [True] * len(rows),
                                recommender.scorer(None))  # fmt: skip
    fitted.save(tmp_path / "r.json")
    recommender.settings = settings.model_copy(update={"ranker": str(tmp_path / "r.json")})
    evaluator.ranker = learned_ranker.Ranker.load(tmp_path / "r.json")
    assert evaluator.ranker.fit_for(evaluator.scorer) is evaluator.ranker.with_llm
    standings = recommender.rank(request)
    assert standings.strategy.endswith("+ranker:r") and [hits[p.index].article.id for p in standings.placed] != served
    assert evaluated_order() == [hits[p.index].article.id for p in standings.placed]


def test_ranking_a_reader_stores_nothing_and_asks_for_nothing(corpus_store, feedback, settings):
    from core.records import Event
    from feed.recommender import FeedRequest, Recommender
    from tests.conftest import NOW

    feedback.add_events([Event("fan", "s1", "click", NOW - 60)])
    recommender = Recommender(corpus_store, feedback, FakeBackend(), settings, clock=lambda: NOW)
    before = (feedback.count_rows("rankings"), feedback.scoring_queue(), recommender.tally.snapshot())
    standings = recommender.rank(FeedRequest("fan", k=5, fresh=True))
    assert standings.placed and standings.fresh
    assert (feedback.count_rows("rankings"), feedback.scoring_queue(), recommender.tally.snapshot()) == before
    assert feedback.cached_relevance("fan", recommender.scorer(None), [h.article.id for h in standings.hits]) == {}
    feed = recommender.publish(standings)  # what recommend does: now it is recorded, and the scores are kept
    assert feedback.ranking(feed.ranking_id).items and feedback.count_rows("rankings") == before[0] + 1
    assert len(feedback.cached_relevance("fan", recommender.scorer(None), [h.article.id for h in standings.hits])) > 0


def test_stale_scores_are_the_llms_under_the_profile_before_the_last_clicks(corpus, impressions, tmp_path):
    """llm-stale{k}: what the background scorer left before the reader's last k clicks, scored as such."""
    backend = CountingBackend()
    evaluator = replay.Evaluator(backend, BlendWeights(), model="fake")
    rows, prepared = replay.run(impressions[:4], corpus, evaluator, ["llm", "llm-stale1", "llm-stale5"], tmp_path,
                                "fake", show_progress=False)  # fmt: skip
    ctx = next(c for c in prepared if len(c.history) >= 2)
    stale = ctx.before_last(1)
    assert [h.article_id for h in stale.history] == [h.article_id for h in ctx.profile.history][1:]
    assert ctx.before_last(99).cold_start
    fresh, older = rows["llm"][ctx.impression.id]["scores"], rows["llm-stale1"][ctx.impression.id]["scores"]
    assert len(fresh) == len(older) and fresh != older  # another profile, another prompt: other scores
