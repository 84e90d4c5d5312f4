"""Adapters: registry, export, training, the gate and hot reload, on the real packaged model where it matters."""

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from adapters import export, gate, train
from adapters.registry import AdapterRegistry, parse_reference
from config.settings import Settings
from core.errors import InvalidInput, NotFound
from core.pseudonyms import Pseudonyms
from core.records import Article, Event, registered_id
from evaluation import replay
from feed.position import Propensities
from feed.recommender import FeedRequest
from llm.backends.fake import FakeBackend
from llm.relevance import relevance_requests
from serve.service import Newsrank
from store.sqlite import SqliteFeedbackStore
from tests.conftest import CORPUS, NOW, SPORTS_TITLES, random_lora

MIND = Path(__file__).parent / "fixtures" / "mind"
PSEUDONYMS = Pseudonyms(b"a test secret, 32 bytes long...")


def fake_adapter(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    return folder


def test_registry_versions_ids_activation_and_rollback(tmp_path):
    registry = AdapterRegistry(tmp_path / "adapters", SqliteFeedbackStore(tmp_path / "feedback.sqlite3"))
    v1 = registry.publish("clicks", fake_adapter(tmp_path / "a"))
    v2 = registry.publish("clicks", fake_adapter(tmp_path / "b"))
    other = registry.publish("sports", fake_adapter(tmp_path / "c"), activate=False)
    assert (v1.key, v1.id, v2.key, v2.id, other.id) == ("clicks@1", 1, "clicks@2", 2, 3)
    assert registry.resolve("clicks").key == "clicks@2" and registry.resolve("clicks@1").path.is_dir()
    with pytest.raises(NotFound):
        registry.resolve("sports")  # published, not active
    assert registry.activate("clicks@1").key == "clicks@1"
    assert registry.rollback("clicks").key == "clicks@2"
    assert registry.rollback("clicks").key == "clicks@1"
    with pytest.raises(NotFound):
        registry.rollback("clicks")  # nothing earlier
    # ids stay put across reopening and later versions
    reopened = AdapterRegistry(tmp_path / "adapters", SqliteFeedbackStore(tmp_path / "feedback.sqlite3"))
    assert {v.key: v.id for v in reopened.versions()} == {"clicks@1": 1, "clicks@2": 2, "sports@1": 3}
    assert reopened.publish("clicks", fake_adapter(tmp_path / "d")).id == 4
    # what a backend reads from a version folder alone (vLLM's LoRA int ids)
    assert registered_id(v2.path) == 2 and registered_id(other.path) == 3
    assert registered_id(tmp_path / "a") is None and registered_id(tmp_path / "adapters" / "clicks" / "v9") is None


def test_registry_rejects_bad_input(tmp_path, feedback):
    registry = AdapterRegistry(tmp_path, feedback)
    for bad in ("Bad Name", "x@y", "../up"):
        with pytest.raises(InvalidInput):
            parse_reference(bad)
    with pytest.raises(InvalidInput):
        registry.publish("clicks", tmp_path)  # not an adapter folder
    with pytest.raises(NotFound):
        registry.resolve("nothing")
    assert parse_reference("clicks@12") == ("clicks", 12)


def test_a_registry_json_of_an_older_newsrank_moves_into_the_store(tmp_path, feedback):
    root = tmp_path / "adapters"
    for key in ("clicks@1", "sports@1", "clicks@2"):
        fake_adapter(root / key.split("@")[0] / f"v{key[-1]}")
    index = {
        "names": {"clicks": {"versions": [1, 2], "active": 1, "history": [1, 2, 1]},
                  "sports": {"versions": [1], "active": None, "history": []}},
        "ids": {"clicks@1": 1, "sports@1": 2, "clicks@2": 3},
    }  # fmt: skip
    (root / "registry.json").write_text(json.dumps(index))
    registry = AdapterRegistry(root, feedback)
    assert [(v.key, v.id, v.active) for v in registry.versions()] == [
        ("clicks@1", 1, True), ("clicks@2", 3, False), ("sports@1", 2, False)
    ]  # fmt: skip
    assert registered_id(root / "clicks" / "v2") == 3 and not (root / "registry.json").exists()
    assert registry.rollback("clicks").key == "clicks@2"  # the activation history came along
    assert registry.publish("sports", fake_adapter(tmp_path / "new")).id == 4


def test_negative_sampling_and_the_split_are_deterministic():
    examples = [export.Example("p", f"s{i}", int(i < 2), "g1") for i in range(10)]
    examples += [export.Example("q", f"t{i}", 0, "g2") for i in range(5)]
    kept = export.sample_negatives(examples, 1, seed=0)
    assert [e.suffix for e in kept if e.label] == ["s0", "s1"]
    assert sum(1 for e in kept if e.group == "g1" and not e.label) == 2 and sum(e.group == "g2" for e in kept) == 1
    assert kept == export.sample_negatives(examples, 1, seed=0)
    assert export.sample_negatives(examples, None, 0) == examples
    # the split is pinned: sha256("SEED:GROUP") mod 10,000 below share × 10,000
    assert [export.in_validation(f"user-{i}", 0.5) for i in range(8)] == [False, True, True, False, False, True,
                                                                          True, False]  # fmt: skip
    share = sum(export.in_validation(f"u{i}", 0.2) for i in range(10_000)) / 10_000
    assert 0.185 < share < 0.215  # the share asked for, on many groups
    moved = sum(export.in_validation(f"u{i}", 0.2, seed=1) != export.in_validation(f"u{i}", 0.2) for i in range(1000))
    assert moved > 200  # another seed, another split (two independent 20 % draws differ on 32 % of groups)


def test_config_file_overrides_and_unknown_keys(tmp_path):
    path = tmp_path / "train.toml"
    path.write_text('rank = 8\nlearning_rate = 0.001\ntarget_modules = ["q_proj"]\n')
    config = train.load_config(path, ["epochs=3", "rank=4"], data="d.jsonl", output="out")
    assert (config.rank, config.epochs, config.learning_rate, config.target_modules) == (4, 3, 0.001, ["q_proj"])
    with pytest.raises(InvalidInput):
        train.load_config(None, ["ranks=4"], data="d", output="o")
    with pytest.raises(InvalidInput):
        train.load_config(None, ["rank=many"], data="d", output="o")


def test_the_exported_prompt_is_byte_identical_to_the_served_one(corpus_store, feedback, settings, llm):
    service = Newsrank(settings, corpus_store, feedback, llm, clock=lambda: NOW)
    feedback.add_events([Event("fan", a, "click", NOW - 3600 * (4 - i)) for i, a in enumerate(("s1", "s2", "s3"))])
    feed = service.recommend(FeedRequest("fan", k=4, explain=False))
    served = feedback.ranking(feed.ranking_id)
    # the reader is then shown the feed (after every event the ranking used) and clicks the second item
    shown = [i.article_id for i in served.items]
    feedback.add_events(
        [Event("fan", a, "impression", NOW + 1) for a in shown] + [Event("fan", shown[1], "click", NOW + 2)]
    )
    examples = list(export.from_feedback(feedback, corpus_store, llm, settings, NOW, service.pseudonyms))
    assert [e.label for e in examples] == [0, 1, 0, 0] and {e.weight for e in examples} == {1.0}
    assert {e.group for e in examples} == {service.pseudonyms("fan")} != {"fan"}  # the reader, pseudonymous
    for example, article_id in zip(examples, shown, strict=True):
        article = corpus_store.get([article_id])[article_id].article
        serving = relevance_requests(llm, served.profile_text, [article])[0]
        assert example.prompt == serving.prompt and example.prefix == serving.prefix


def test_a_feeds_items_share_its_prompt_when_their_events_arrive_one_at_a_time(corpus_store, feedback, settings, llm):
    """A reader scrolls: two items shown, the second clicked, then the rest shown. Every item of that feed is
    judged under the profile the feed was ranked with (one prompt, so the listwise objective orders the click
    against all of them), not the later ones under a profile that already holds the click: also when the export
    starts after the click, and for an article clicked in a later feed, under that feed's profile."""
    service = Newsrank(settings, corpus_store, feedback, llm, clock=lambda: NOW)
    feedback.add_events([Event("fan", "s1", "click", NOW - 3600)])
    feed = service.recommend(FeedRequest("fan", k=4, explain=False))
    served = feedback.ranking(feed.ranking_id)
    shown = [i.article_id for i in served.items]
    seen = [Event("fan", a, "impression", NOW + 1 + i, ranking_id=feed.ranking_id) for i, a in enumerate(shown)]
    feedback.add_events([*seen[:2], Event("fan", shown[1], "click", NOW + 2.5, ranking_id=feed.ranking_id)])
    feedback.add_events(seen[2:])
    examples = list(export.from_feedback(feedback, corpus_store, llm, settings, NOW, service.pseudonyms))
    assert [e.label for e in examples] == [0, 1, 0, 0]
    first = corpus_store.get([shown[0]])[shown[0]].article
    assert {e.prefix for e in examples} == {relevance_requests(llm, served.profile_text, [first])[0].prefix}
    assert train.orderable(examples) == examples
    after_the_click = list(export.from_feedback(feedback, corpus_store, llm, settings, NOW + 2.7, service.pseudonyms))
    assert after_the_click == examples[2:]
    # an event that names no feed keeps its own moment: after the click, its profile holds it
    other = next(a.id for a in CORPUS if a.id not in {"s1", *shown})
    feedback.add_events([Event("fan", other, "impression", NOW + 10)])
    later = list(export.from_feedback(feedback, corpus_store, llm, settings, NOW, service.pseudonyms))
    assert later[:4] == examples and later[4].prefix != examples[0].prefix
    # the first item, passed over in that feed, is liked in the next one: judged as that feed saw the reader
    then = Newsrank(settings, corpus_store, feedback, llm, clock=lambda: NOW + 20)
    second = feedback.ranking(then.recommend(FeedRequest("fan", k=4, explain=False)).ranking_id)
    feedback.add_events([Event("fan", shown[0], "like", NOW + 21, ranking_id=second.ranking_id)])
    [liked] = [e for e in export.from_feedback(feedback, corpus_store, llm, settings, NOW, service.pseudonyms)
               if e.suffix == examples[0].suffix]  # fmt: skip
    assert liked.label == 1 and second.profile_text != served.profile_text
    assert liked.prefix == relevance_requests(llm, second.profile_text, [first])[0].prefix


def test_a_click_weighs_the_inverse_propensity_of_its_place_in_export_and_in_the_loss(
    corpus_store, feedback, settings, llm, tmp_path
):
    service = Newsrank(settings, corpus_store, feedback, llm, clock=lambda: NOW)
    feedback.add_events([Event("fan", "s1", "click", NOW - 3600)])
    feed = service.recommend(FeedRequest("fan", k=4, explain=False))
    shown = [i.article.id for i in feed.items]
    feedback.add_events([Event("fan", a, "impression", NOW + 1, ranking_id=feed.ranking_id) for a in shown]
                        + [Event("fan", shown[2], "click", NOW + 2, ranking_id=feed.ranking_id),  # third place
                           Event("fan", shown[3], "like", NOW + 2)])  # names no feed: its place is unknown  # fmt: skip
    seen = Propensities((1.0, 0.5, 0.25, 0.2), feeds=500)
    examples = list(export.from_feedback(feedback, corpus_store, llm, settings, NOW, service.pseudonyms, seen))
    assert [(e.label, e.weight) for e in examples] == [(0, 1.0), (0, 1.0), (1, 4.0), (1, 1.0)]
    export.write_examples(tmp_path / "x.jsonl", examples)
    assert export.read_examples(tmp_path / "x.jsonl") == examples

    margins = torch.tensor([0.3, -1.0, 0.2, 0.5])
    plain = [replace(e, weight=1.0) for e in examples]
    each = torch.nn.functional.binary_cross_entropy_with_logits(
        margins, torch.tensor([0.0, 0.0, 1.0, 1.0]), reduction="none"
    )
    assert train.summed_loss(margins, *train.targets(plain)).item() == pytest.approx(each.sum().item())
    assert train.summed_loss(margins, *train.targets(examples)).item() == pytest.approx(
        (each.sum() + 3 * each[2]).item()
    )


def test_the_gate_refuses_an_adapter_that_is_not_better():
    worse = gate.decide(gate.Quality(60.0, 40.0, 10), gate.Quality(65.0, 45.0, 10))
    assert not worse.passed and "keep the served one" in worse.summary()
    assert gate.decide(gate.Quality(66.0, 45.0, 10), gate.Quality(65.0, 45.0, 10)).passed
    assert not gate.decide(gate.Quality(66.0, 44.0, 10), gate.Quality(65.0, 45.0, 10)).passed  # nDCG fell
    # the fake adapter shifts every score alike: the same ranking, so not better
    backend = FakeBackend()
    backend.load_adapter("same", "/x")
    examples = [
        export.Example("sports fan", s, label, "g")
        for s, label in [("sports final", 1), ("pasta", 0), ("sports news", 0)]
    ]
    assert not gate.gate(backend, examples, "same", None).passed


def test_training_changes_the_adapter_not_the_base_and_resumes(llm, tmp_path):
    impressions = replay.read_behaviors(MIND / "behaviors.tsv")[0][:4]
    corpus = replay.Corpus(MIND / "news.tsv", llm_embedder(), tmp_path / "cache", show_progress=False)
    data = tmp_path / "examples.jsonl"
    export.write_examples(
        data, export.from_mind(replay.contexts(impressions, corpus), llm, Settings(history_titles=3), PSEUDONYMS)
    )
    config = train.load_config(None, ["rank=4", "batch_size=8", "validation_share=0.0", "checkpoint_every=2"],
                               data=str(data), output=str(tmp_path / "run"))  # fmt: skip
    card = train.main(config, show_progress=False)
    assert card["steps"] == 4 and card["examples"]["train"] == 24 and card["data_sha256"] == train.data_hash(data)

    from safetensors.torch import load_file

    weights = load_file(tmp_path / "run" / "adapter" / "adapter_model.safetensors")
    lora_b = [w for k, w in weights.items() if "lora_B" in k]
    assert lora_b and all(w.abs().sum() > 0 for w in lora_b)  # LoRA B starts at zero: training moved it
    assert not any("lora" not in k for k in weights)  # only adapter weights are saved
    assert card["base_weights_unchanged"]  # every frozen weight has the same fingerprint after training
    assert json.loads((tmp_path / "run" / "adapter" / "card.json").read_text())["steps"] == 4

    again = train.main(config, show_progress=False)  # a finished run resumes at its last step: no more work
    assert again["steps"] == 4 and again["train_seconds_this_run"] < card["train_seconds_this_run"] + 5

    # an interruption after step 2: the checkpoint says so, and the rerun does steps 3 and 4 only, also with
    # settings that change how it runs (threads), not what it learns
    state_path = tmp_path / "run" / "checkpoint" / "state.pt"
    state = torch.load(state_path, weights_only=False)
    first_losses = list(state["losses"])
    torch.save({**state, "step": 2, "losses": [9.0, 9.0]}, state_path)  # marked: a fresh start would lose them
    other_threads = train.load_config(None, ["rank=4", "batch_size=8", "validation_share=0.0", "checkpoint_every=2",
                                             "threads=1", "eval_every=0"], data=str(data), output=str(tmp_path / "run"))  # fmt: skip
    resumed = train.main(other_threads, show_progress=False)
    losses = torch.load(state_path, weights_only=False)["losses"]
    assert resumed["steps"] == 4 and losses[:2] == [9.0, 9.0] and len(losses) == 4
    assert losses[2:] != first_losses[2:]  # steps 3 and 4 ran again, from the checkpoint's weights


def test_packed_candidates_score_as_each_would_alone(llm):
    """One sequence with a block mask gives every candidate the margin it gets after its prefix on its own, with
    one prefix and with two (one reader's profiles at two times, as private training packs them)."""
    from llm.backends.transformers import answer_margins, packed_margins

    articles = [Article(str(i), title, 0.0, category="sports") for i, title in enumerate(SPORTS_TITLES)]
    requests = relevance_requests(llm, "Interests: sports, football.", articles)
    later = relevance_requests(llm, "Interests: politics.", articles[:2])
    with torch.inference_mode(), llm._adapter(None) as model:
        packed = packed_margins(model, llm.tokenizer, [(requests[0].prefix, [r.suffix for r in requests])],
                                llm._answer_ids)  # fmt: skip
        two = packed_margins(model, llm.tokenizer, [(later[0].prefix, [r.suffix for r in later]),
                                                    (requests[0].prefix, [r.suffix for r in requests])],
                             llm._answer_ids)  # fmt: skip
        alone = torch.cat([
            answer_margins(model, llm.tokenizer, [r.prompt], None, 0, llm._answer_ids) for r in later + requests
        ])  # fmt: skip
    assert torch.allclose(packed, alone[2:], atol=1e-4)
    assert torch.allclose(two, alone, atol=1e-4)
    assert packed.std() > 0.05  # different titles, different answers: the mask did not blur them together
    assert not torch.allclose(two[:2], packed[:2], atol=1e-3)  # each block read its own profile
    with pytest.raises(InvalidInput):
        packed_margins(model, llm.tokenizer, [(requests[0].prefix, [])], llm._answer_ids)


def test_packed_and_padded_training_learn_the_same_and_snapshots_are_saved(llm, tmp_path):
    impressions = replay.read_behaviors(MIND / "behaviors.tsv")[0][:4]
    corpus = replay.Corpus(MIND / "news.tsv", llm_embedder(), tmp_path / "cache", show_progress=False)
    data = tmp_path / "examples.jsonl"
    export.write_examples(data, export.from_mind(replay.contexts(impressions, corpus), llm, Settings(), PSEUDONYMS))
    losses = {}
    ways = {"by spans": ["packed=true"], "one mask": ["packed=true", "attention=masked"], "padded": ["packed=false"]}
    for way, chosen in ways.items():
        run = tmp_path / way.replace(" ", "-")
        overrides = ["rank=4", "dropout=0", "validation_share=0.0", "snapshots=[10]", "accumulate=2", *chosen]
        config = train.load_config(None, overrides, data=str(data), output=str(run))
        card = train.main(config, show_progress=False)
        assert card["examples_seen"] == 24 and card["steps"] == 4  # 4 impressions, 2 per optimizer step
        assert (run / "snapshots" / "10-examples" / "adapter_model.safetensors").is_file()
        losses[way] = torch.load(run / "checkpoint" / "state.pt", weights_only=False)["losses"]
    # the same examples, the same start: the three ways to compute the margins give the same training
    assert losses["by spans"] == pytest.approx(losses["padded"], abs=1e-3)
    assert losses["one mask"] == pytest.approx(losses["padded"], abs=1e-3)


def llm_embedder():
    from retrieval.embed import Embedder

    return Embedder()


def test_a_newly_activated_adapter_is_served_without_restart(corpus_store, feedback, settings, llm, tmp_path):
    registry = AdapterRegistry(tmp_path / "adapters", feedback)
    service = Newsrank(settings, corpus_store, feedback, llm, clock=lambda: NOW, adapters=registry)
    feedback.add_events([Event("fan", a, "click", NOW - 3600) for a in ("s1", "s2")])
    by_default = settings.model_copy(update={"adapter": "clicks"})  # NEWSRANK_ADAPTER=clicks
    serving = Newsrank(by_default, corpus_store, feedback, llm, clock=lambda: NOW, adapters=registry)
    before = serving.recommend(FeedRequest("fan", k=3, explain=False))
    assert feedback.ranking(before.ranking_id).adapter is None  # not trained yet: the base model serves
    registry.publish("clicks", random_lora(tmp_path / "one", seed=1))
    first = service.recommend(FeedRequest("fan", k=3, explain=False, adapter="clicks"))
    assert feedback.ranking(first.ranking_id).adapter == "clicks@1"
    after = serving.recommend(FeedRequest("fan", k=3, explain=False))
    assert feedback.ranking(after.ranking_id).adapter == "clicks@1"  # the running service picked it up
    registry.publish("clicks", random_lora(tmp_path / "two", seed=2))  # a newer version goes live
    second = service.recommend(FeedRequest("fan", k=3, explain=False, adapter="clicks"))
    assert feedback.ranking(second.ranking_id).adapter == "clicks@2"
    relevance = lambda feed: {i.article.id: i.record.signals["relevance"] for i in feed.items}  # noqa: E731
    common = set(relevance(first)) & set(relevance(second))
    assert any(abs(relevance(first)[a] - relevance(second)[a]) > 1e-4 for a in common)
    pinned = service.recommend(FeedRequest("fan", k=3, explain=False, adapter="clicks@1"))  # an A/B arm
    assert feedback.ranking(pinned.ranking_id).adapter == "clicks@1"
    registry.rollback("clicks")
    assert (
        feedback.ranking(service.recommend(FeedRequest("fan", k=3, adapter="clicks")).ranking_id).adapter == "clicks@1"
    )
    with pytest.raises(NotFound):
        service.recommend(FeedRequest("fan", k=3, adapter="unknown"))


def test_train_publish_serve_round_trip_from_the_command_line(tmp_path):
    env = {**os.environ, "NEWSRANK_DATA_DIR": str(tmp_path / "data"), "NEWSRANK_EXPLAIN_TOP": "0"}

    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "serve.cli", *args], env=env, capture_output=True, text=True, timeout=900
        )

    trained = run("train", "--name", "clicks", "--mind-news", str(MIND / "news.tsv"), "--mind-behaviors",
                  str(MIND / "behaviors.tsv"), "--part", "all", "--limit", "6", "--set", "rank=4", "--force")  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    assert "validation" in trained.stdout and "published clicks@1 (id 1)" in trained.stdout
    listed = run("adapters", "list")
    assert "* clicks@1" in listed.stdout
    assert run("ingest", str(MIND / "news.tsv")).returncode == 0
    events = tmp_path / "events.jsonl"
    events.write_text(json.dumps({"user_id": "u", "article_id": "N1", "type": "click"}) + "\n")
    assert run("events", "add", str(events)).returncode == 0
    feed = run("recommend", "--user", "u", "--k", "3", "--adapter", "clicks", "--json")
    assert feed.returncode == 0, feed.stderr
    ranking_id = json.loads(feed.stdout)["ranking_id"]
    top = json.loads(feed.stdout)["items"][0]["article_id"]
    why = run("why", "--user", "u", "--article", top, "--ranking", ranking_id)
    assert "adapter clicks@1" in why.stdout
    assert run("adapters", "rollback", "clicks").returncode == 3  # no earlier version

    # continuous learning: the reader's events since clicks@1 was trained become the next version
    shown = [i["article_id"] for i in json.loads(feed.stdout)["items"]]
    events.write_text("".join(json.dumps({"user_id": "u", "article_id": a, "type": "impression"}) + "\n" for a in shown)
                      + json.dumps({"user_id": "u", "article_id": shown[0], "type": "click"}) + "\n")  # fmt: skip
    assert run("events", "add", str(events)).returncode == 0
    again = run(
        "train", "--name", "clicks", "--since", "last", "--set", "rank=4", "--set", "validation_share=0", "--force"
    )
    assert again.returncode == 0, again.stderr
    assert (
        "4 examples written" in again.stdout
    )  # N1 clicked, and the three shown (one clicked) and "published clicks@2" in again.stdout
    assert run("adapters", "rollback", "clicks").stdout.strip() == "clicks@1 is now active"


def test_training_writes_a_tensorboard_log_of_loss_rate_and_validation_auc(llm, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    impressions = replay.read_behaviors(MIND / "behaviors.tsv")[0][:8]
    corpus = replay.Corpus(MIND / "news.tsv", llm_embedder(), tmp_path / "cache", show_progress=False)
    data = tmp_path / "examples.jsonl"
    export.write_examples(data, export.from_mind(replay.contexts(impressions, corpus), llm, Settings(), PSEUDONYMS))
    run = tmp_path / "run"
    # the pointwise objective end to end (the other trainings here run the default, listwise)
    config = train.load_config(None, ["rank=2", "validation_share=0.5", "eval_every=2", "learning_rate=0.001",
                                      "objective=pointwise"], data=str(data), output=str(run))  # fmt: skip
    card = train.main(config, show_progress=False)
    log = EventAccumulator(str(run / "tensorboard"))
    log.Reload()
    assert {"train/loss", "train/learning_rate", "validation/auc"} <= set(log.Tags()["scalars"])
    losses = torch.load(run / "checkpoint" / "state.pt", weights_only=False)["losses"]
    assert [e.value for e in log.Scalars("train/loss")] == pytest.approx(losses, rel=1e-5)
    assert [e.value for e in log.Scalars("train/learning_rate")] == pytest.approx([0.001] * card["steps"])
    aucs = log.Scalars("validation/auc")
    assert [e.step for e in aucs] == [s for s in range(1, card["steps"] + 1) if s % 2 == 0 or s == card["steps"]]
    assert all(0 <= e.value <= 100 for e in aucs) and aucs[-1].value == pytest.approx(card["validation_auc_last"])


def test_the_listwise_loss_is_each_clicks_softmax_cross_entropy_against_the_non_clicks():
    import math

    import torch

    batch = [export.Example("p", s, label, "g", weight) for s, label, weight in
             (("a", 1, 1.0), ("b", 0, 1.0), ("c", 0, 1.0), ("d", 1, 2.0))]  # fmt: skip
    margins = torch.tensor([1.0, 0.5, -1.0, 0.0], requires_grad=True)

    def lse(*xs: float) -> float:
        return math.log(sum(math.exp(x) for x in xs))

    expected = (lse(1.0, 0.5, -1.0) - 1.0) + 2.0 * (lse(0.0, 0.5, -1.0) - 0.0)  # each click against b and c
    assert train.listwise_loss(margins, *train.targets(batch)).item() == pytest.approx(expected, rel=1e-6)
    train.listwise_loss(margins, *train.targets(batch)).backward()
    assert margins.grad[0] < 0 < margins.grad[1]  # a click is pushed up, a non-click down
    no_click = train.targets(batch[1:3])
    nothing = train.listwise_loss(torch.tensor([1.0, 2.0], requires_grad=True), *no_click)  # nothing to order
    assert nothing.item() == 0.0 and nothing.requires_grad
    assert train.TrainConfig(data="d", output="o").objective == "listwise"  # it measured better (docs/BENCHMARKS.md)
    both = train.objective_loss(margins, *train.targets(batch), "listwise", anchor=0.5).item()
    assert both == pytest.approx(expected + 0.5 * train.summed_loss(margins, *train.targets(batch)).item(), rel=1e-6)


def test_the_listwise_objective_leaves_out_prompts_with_nothing_to_order(tmp_path):
    """A reader's past clicks sent without what else they were shown become examples with clicks alone: the
    listwise loss has nothing to order in them, and its pointwise anchor would only push P(Yes) up. They are left
    out; where nothing else is left, training says so before it loads a model."""
    mixed = [export.Example("p1", s, label, "g1") for s, label in (("a", 1), ("b", 0), ("c", 0))]
    alone = [export.Example(f"q{n}", f"x{n}", 1, "g2") for n in range(4)]
    not_shown = [export.Example("p2", "d", 0, "g3")]
    assert train.orderable([*alone, *mixed, *not_shown]) == mixed
    data = tmp_path / "clicks.jsonl"
    config = train.TrainConfig(data=str(data), output=str(tmp_path / "out"), objective="listwise",
                               validation_share=0.0)  # fmt: skip
    export.write_examples(data, [*alone * 5, *not_shown])
    with pytest.raises(InvalidInput, match="nothing for the listwise objective to order"):
        train.main(config, show_progress=False)
    export.write_examples(data, alone * 5)  # and under either objective, clicks alone teach Yes to all
    for objective in ("pointwise", "listwise"):
        with pytest.raises(InvalidInput, match="no negative training example"):
            train.main(replace(config, objective=objective), show_progress=False)
    assert not (tmp_path / "out").exists()
