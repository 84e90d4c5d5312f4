"""Privacy: differentially private adapters (Opacus on the real packaged model)."""

import json
from functools import partial
from pathlib import Path

import pytest
import torch

from adapters import export, private, train
from config.settings import Settings
from core.errors import InvalidInput
from evaluation import replay
from tests.conftest import MODEL_CACHE

MIND = Path(__file__).parent / "fixtures" / "mind"


def test_the_noise_grows_as_epsilon_shrinks_and_the_run_spends_at_most_epsilon():
    loose = private.plan(1000, 8.0, None, 32, 1, 1.0, 16)
    tight = private.plan(1000, 2.0, None, 32, 1, 1.0, 16)
    assert loose.delta == tight.delta == 1 / 1000  # δ = 1/N by default
    assert tight.noise_multiplier > loose.noise_multiplier > 0
    assert loose.steps == round(1000 / 32) and loose.sample_rate == 32 / 1000
    for budget in (loose, tight):
        assert budget.epsilon * 0.95 <= private.spent(budget, budget.steps) <= budget.epsilon
        assert private.spent(budget, budget.steps // 2) < private.spent(budget, budget.steps)
    more_readers = private.plan(100_000, 8.0, None, 3200, 1, 1.0, 16)  # the same rate, 100x the readers
    assert more_readers.noise_multiplier / 3200 < loose.noise_multiplier / 32 / 50  # noise per reader shrinks
    with pytest.raises(InvalidInput):
        private.plan(10, 0.0, None, 4, 1, 1.0, 16)
    with pytest.raises(InvalidInput):
        private.plan(10, 8.0, 1.5, 4, 1, 1.0, 16)


def test_a_reader_is_one_example_with_a_bounded_number_of_rows():
    rows = [export.Example(f"profile {i % 2}", f"c{i}", i % 3 == 0, "a") for i in range(30)]
    rows += [export.Example("p", "x", 1, "b")]
    found = private.readers(rows, per_reader=8, seed=0)
    assert len(found) == 2
    a, b = found
    assert len(a.labels) == 8 and {p for p, _ in a.blocks} <= {"profile 0", "profile 1"}
    assert sum(len(s) for _, s in a.blocks) == 8
    assert b.blocks == (("p", ("x",)),) and b.labels == (1.0,)
    assert private.readers(rows, 8, 0) == found  # seeded
    # whole prompts first, and a prompt cut to fit keeps clicks beside its non-clicks (for the listwise objective)
    one_prompt = [export.Example("p", f"c{i}", int(i in (7, 23)), "c") for i in range(30)]
    for seed in range(5):
        [c] = private.readers(one_prompt, per_reader=8, seed=seed)
        assert sorted(c.labels) == [0.0] * 6 + [1.0] * 2
    three = [export.Example(f"q{i // 3}", f"d{i}", int(i % 3 == 0), "d") for i in range(9)]
    for seed in range(5):
        [d] = private.readers(three, per_reader=7, seed=seed)
        assert [len(s) for _, s in d.blocks] == [3, 3, 1] and sum(d.labels) == 3  # two whole, and a click of one
    sampled = [private.sample(100, 0.1, 0, step) for step in range(50)]
    assert sampled[3] == private.sample(100, 0.1, 0, 3)  # a resumed run takes the same readers
    assert 0.07 < sum(map(len, sampled)) / 5000 < 0.13


@pytest.fixture(scope="module")
def lora_model():
    import peft
    import transformers

    from llm.models import resolve_llm

    base = resolve_llm("smollm2-135m", MODEL_CACHE)
    tokenizer = transformers.AutoTokenizer.from_pretrained(base)
    model = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = peft.LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj"])
    return peft.get_peft_model(model, config), tokenizer


@pytest.mark.slow
def test_a_readers_step_is_clipped_to_the_norm(llm, lora_model):
    """With no noise and plain SGD at rate 1, a step moves the LoRA weights by exactly the sum of the readers'
    clipped gradients over the expected batch: one reader, however many rows, moves them by at most the norm."""
    from core.records import Article
    from llm.relevance import relevance_requests

    model, tokenizer = lora_model
    articles = [Article(str(i), f"Story number {i} about football", 0.0, category="sports") for i in range(6)]
    requests = relevance_requests(llm, "Interests: sports.", articles)
    reader = private.Reader(((requests[0].prefix, tuple(r.suffix for r in requests)),), (1.0, 0, 0, 1.0, 0, 0))
    weights = [p for p in model.parameters() if p.requires_grad]

    def moved(norm: float) -> float:
        before = [p.detach().clone() for p in weights]
        budget = private.Budget(1.0, 1e-5, norm, 0.0, 1.0, 1, 1, 6)
        module, optimizer = private.make_private(model, torch.optim.SGD(weights, lr=1.0), budget)
        pointwise = partial(train.objective_loss, objective="pointwise", anchor=0.0)
        private.train_step(module, optimizer, tokenizer, [reader], llm._answer_ids, "cpu", pointwise)
        module._close()
        change = torch.cat([(p.detach() - b).flatten() for p, b in zip(weights, before, strict=True)]).norm()
        with torch.no_grad():
            for p, b in zip(weights, before, strict=True):
                p.copy_(b)
        return float(change)

    free = moved(1e6)
    assert free > 1e-4  # the reader's own gradient, unclipped
    clipped = moved(free / 10)
    assert clipped == pytest.approx(free / 10, rel=1e-3)


@pytest.mark.slow
def test_a_private_readers_loss_orders_each_prompts_candidates_among_themselves(llm, lora_model):
    """Under the listwise objective a reader's loss is each of their prompts' softmax loss (its clicks against its
    own non-clicks), summed and divided by their rows; under the pointwise one, their rows' mean cross-entropy."""
    from core.records import Article
    from llm.backends.transformers import packed_margins
    from llm.relevance import relevance_requests

    model, tokenizer = lora_model
    articles = [Article(str(i), f"Story number {i} about football", 0.0, category="sports") for i in range(6)]
    blocks = []
    for interests, some in (("sports", articles[:3]), ("politics", articles[3:])):
        requests = relevance_requests(llm, f"Interests: {interests}.", some)
        blocks.append((requests[0].prefix, tuple(r.suffix for r in requests)))
    reader = private.Reader(tuple(blocks), (1.0, 0, 0, 0, 1.0, 0))
    with torch.no_grad():
        margins = packed_margins(model, tokenizer, reader.blocks, llm._answer_ids)
    labels, ones = torch.tensor(reader.labels), torch.ones(6)
    mean_bce = torch.nn.functional.binary_cross_entropy_with_logits(margins, labels).item()
    by_prompt = sum(train.listwise_loss(margins[i : i + 3], labels[i : i + 3], ones[:3]) for i in (0, 3)).item() / 6
    as_one_list = train.listwise_loss(margins, labels, ones).item() / 6
    assert by_prompt != pytest.approx(as_one_list, rel=1e-3)  # the two readings differ here
    weights = [p for p in model.parameters() if p.requires_grad]
    for name, expected in (("pointwise", mean_bce), ("listwise", by_prompt)):
        objective = partial(train.objective_loss, objective=name, anchor=0.0)
        budget = private.Budget(1.0, 1e-5, 1.0, 0.0, 1.0, 1, 1, 6)
        module, optimizer = private.make_private(model, torch.optim.SGD(weights, lr=0.0), budget)
        loss = private.train_step(module, optimizer, tokenizer, [reader], llm._answer_ids, "cpu", objective)
        module._close()
        assert loss == pytest.approx(expected, rel=1e-4)


@pytest.mark.slow
def test_private_training_on_the_real_model_states_its_guarantee(llm, tmp_path):
    impressions = replay.read_behaviors(MIND / "behaviors.tsv")[0][:6]
    from retrieval.embed import Embedder

    corpus = replay.Corpus(MIND / "news.tsv", Embedder(), tmp_path / "cache", show_progress=False)
    data = tmp_path / "examples.jsonl"
    rows = list(export.from_mind(replay.contexts(impressions, corpus), llm, Settings(), str))
    export.write_examples(data, rows)
    readers = len({e.group for e in rows})
    run = tmp_path / "run"
    overrides = ["rank=4", "dropout=0", "validation_share=0.0", "dp_epsilon=8", "dp_readers_per_step=2",
                 "dp_examples_per_reader=4", "learning_rate=0.01"]  # fmt: skip
    card = train.main(train.load_config(None, overrides, data=str(data), output=str(run)), show_progress=False)
    dp = card["privacy"]
    assert dp["unit"] == "reader" and dp["readers"] == readers and dp["examples_per_reader"] == 4
    assert dp["delta"] == pytest.approx(1 / readers) and dp["noise_multiplier"] > 0 and dp["max_grad_norm"] == 1.0
    assert card["steps"] == dp["steps"] == round(readers / 2)
    assert 0 < dp["epsilon_spent"] <= 8.0
    assert card["base_weights_unchanged"]
    saved = json.loads((run / "adapter" / "card.json").read_text())
    assert saved["privacy"] == dp
    from safetensors.torch import load_file

    lora_b = [t for k, t in load_file(run / "adapter" / "adapter_model.safetensors").items() if "lora_B" in k]
    assert any(t.abs().sum() > 0 for t in lora_b)  # it trained (LoRA B starts at zero)
    assert card["examples_seen"] <= card["steps"] * 4 * readers


# -- pseudonyms, erasure everywhere, retention -----------------------------------------------------------------
def test_the_pseudonym_secret_is_made_once_kept_private_and_can_be_shared(tmp_path):
    from serve.service import reader_pseudonyms

    settings = Settings(data_dir=tmp_path / "data")
    first = reader_pseudonyms(settings)
    key = settings.api_keys_path.parent / "pseudonym.key"
    assert key.is_file() and key.stat().st_mode & 0o777 == 0o600
    alice = first("alice")
    assert alice.startswith("r_") and "alice" not in alice and alice != first("alice2")
    assert reader_pseudonyms(settings)("alice") == alice  # the next start reads the same secret
    elsewhere = reader_pseudonyms(Settings(data_dir=tmp_path / "other"))
    assert elsewhere("alice") != alice  # another secret, another pseudonym: not linkable without the secret
    shared = Settings(data_dir=tmp_path / "third", pseudonym_secret=key.read_text())
    assert reader_pseudonyms(shared)("alice") == alice  # instances that share the secret agree
    assert not (tmp_path / "third").exists()  # and write no key file of their own
    key.write_text("short")
    with pytest.raises(InvalidInput):
        reader_pseudonyms(settings)


@pytest.mark.slow
def test_after_erasure_no_file_the_service_wrote_holds_the_reader(llm, tmp_path, caplog):
    """A reader's whole life in the service: events, feeds, why, the background scorer, /metrics, a training
    export, an adapter trained and published. Nothing outside the store's tables names them or an event's exact
    time; after erasure no file under the data folder holds their id or their pseudonym."""
    import logging
    import time

    from litestar.testing import TestClient

    from adapters import train
    from feed.recommender import FeedRequest
    from serve.app import create_app
    from serve.service import Newsrank
    from serve.worker import ScoringWorkers
    from tests.conftest import CORPUS

    raw = "reader-7f3a9c-to-forget"
    admin = "admin-key-0123456789abcdef"
    settings = Settings(data_dir=tmp_path / "data", model_cache=MODEL_CACHE, candidates=12, explain_top=2,
                        scorer_threads=0, api_keys=json.dumps([{"name": "a", "key": admin, "scope": "admin"}]))  # fmt: skip
    service = Newsrank.from_settings(settings, backend=llm)
    now = time.time()
    service.articles.upsert([a.__class__(**{**a.__dict__, "published_at": now - 3600}) for a in CORPUS])
    when = now - 1234.5  # an exact event time no file outside the store may hold
    with caplog.at_level(logging.DEBUG):
        service.add_events([{"user_id": raw, "article_id": a, "type": "click", "ts": when + i}
                            for i, a in enumerate(("s1", "s2", "s4"))])  # fmt: skip
        service.add_events([{"user_id": "someone", "article_id": "p1", "type": "click", "ts": when}])
        ScoringWorkers(service.recommender, 1).run_until_idle()
        with TestClient(app=create_app(newsrank=service)) as client:
            body = client.post("/v1/feed", json={"user_id": raw, "k": 4}, headers={"X-API-Key": admin}).json()
            shown = [i["article_id"] for i in body["items"]]
            client.get("/v1/why", params={"user_id": raw, "article_id": shown[0]}, headers={"X-API-Key": admin})
            metrics_text = client.get("/metrics", headers={"X-API-Key": admin}).text
        ScoringWorkers(service.recommender, 1).run_until_idle()  # the explanation rewrite
        service.add_events([{"user_id": raw, "article_id": a, "type": "impression", "ts": now} for a in shown]
                           + [{"user_id": raw, "article_id": shown[1], "type": "click", "ts": now + 1}])  # fmt: skip
        run = settings.data_dir / "runs" / "clicks"
        rows = export.from_feedback(service.feedback, service.articles, llm, settings, 0.0, service.pseudonyms)
        export.write_examples(run / "examples.jsonl", rows)
        config = train.load_config(None, ["rank=2", "validation_share=0.0", "dropout=0"],
                                   data=str(run / "examples.jsonl"), output=str(run))  # fmt: skip
        train.main(config, show_progress=False)
        service.adapters.publish("clicks", run / "adapter")
        service.recommend(FeedRequest(raw, k=4, explain=False))

    pseudonym = service.pseudonyms(raw)
    files = [p for p in settings.data_dir.rglob("*") if p.is_file()]
    outside_store = [p for p in files if not p.name.startswith("feedback.sqlite3")]
    assert pseudonym in (run / "examples.jsonl").read_text()  # the reader's rows are there, pseudonymous
    assert any(raw.encode() in p.read_bytes() for p in files)  # the store holds them: the search below can fail
    for path in outside_store:
        data = path.read_bytes()
        assert raw.encode() not in data, path
        assert str(int(when)).encode() not in data, path  # no exact event time (an hour is what may be kept)
    assert raw not in metrics_text
    logged = "\n".join(logging.Formatter().format(r) for r in caplog.records)  # with any traceback
    assert raw not in logged and pseudonym not in logged

    erased = service.delete_user(raw)
    assert erased["events"] == 8 and erased["training_examples"] > 0
    for path in (p for p in settings.data_dir.rglob("*") if p.is_file()):
        data = path.read_bytes()
        assert raw.encode() not in data and pseudonym.encode() not in data, path
    assert service.feedback.events("someone")  # the others' data stays


def test_retention_is_enforced_by_the_workers_and_by_the_command(tmp_path):
    import os
    import subprocess
    import sys
    import time

    from core.records import Event
    from llm.backends.fake import FakeBackend
    from serve.service import Newsrank
    from serve.worker import ScoringWorkers

    settings = Settings(data_dir=tmp_path / "data", scorer_threads=0, events_retention_days=30)
    service = Newsrank.from_settings(settings, backend=FakeBackend())
    now = time.time()
    service.feedback.add_events([Event("u", "a", "click", now - 40 * 86400), Event("u", "b", "click", now - 60)])
    workers = ScoringWorkers(service.recommender, 1)
    workers._maybe_sweep(workers.scorers[0])  # the worker's periodic round: the first one also enforces retention
    assert [e.article_id for e in service.feedback.events("u")] == ["b"]
    service.feedback.close()

    env = {**os.environ, "NEWSRANK_DATA_DIR": str(settings.data_dir), "NEWSRANK_EVENTS_RETENTION_DAYS": "0.0001",
           "NEWSRANK_RANKINGS_RETENTION_DAYS": "none"}  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "serve.cli", "retention"], env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "events: 1 deleted, older than 0.0001 days" in done.stdout
    assert "rankings: 0 deleted, no retention set" in done.stdout
