"""The learning loop (serve/learning.py): retraining on schedule, once across instances; continual training from
the active adapter; the gate against forgetting; an A/B test decided by the always-valid test."""

from __future__ import annotations

import dataclasses
import os
import random
import subprocess
import sys
import threading
import uuid

import pytest
from safetensors.torch import load_file

from adapters import gate
from adapters.export import Example
from adapters.registry import AdapterRegistry
from core.errors import InvalidInput, NotFound
from core.records import Event, Job, RankedItem, RankingRecord
from llm.backends.fake import FakeBackend
from serve import learning
from serve.learning import PROMOTED, ROLLED_BACK, STARTED, TRAINING, LearningLoop
from serve.service import Newsrank
from tests.conftest import MODEL_CACHE, NOW, random_lora
from tests.test_evaluate import MIND

CLOCK = [NOW]  # each test's services share one clock it can move


class ClaimingJobs:
    """The training jobs' claim (the store's one-running-job lock), without starting a trainer process."""

    def __init__(self, service: Newsrank) -> None:
        self.service = service

    def start(self, name: str, since: str, overrides=(), force=False, continual=False, candidate=False) -> Job:
        job = Job(uuid.uuid4().hex[:12], "train", ["train", "--name", name, "--since", since, "--from-active",
                  "--candidate"], "running", self.service.clock())  # fmt: skip
        self.service.feedback.claim_job(job)
        return job


@pytest.fixture
def looping(settings, corpus_store, feedback, tmp_path):
    settings = settings.model_copy(update={"adapter": "clicks", "retrain_every_events": 20, "loop_min_feeds": 50,
                                           "loop_max_feeds": 2000, "loop_treatment_share": 0.5})  # fmt: skip
    registry = AdapterRegistry(settings.adapters_path, feedback, lambda: NOW)
    registry.publish("clicks", random_lora(tmp_path / "one", seed=1))
    clock = CLOCK.copy()

    def instance() -> Newsrank:
        service = Newsrank(settings, corpus_store, feedback, FakeBackend(), clock=lambda: clock[0], adapters=registry)
        service.later = lambda seconds: clock.__setitem__(0, clock[0] + seconds)  # type: ignore[attr-defined]
        service.jobs = ClaimingJobs(service)
        return service

    return instance


def test_retraining_is_due_by_events_and_starts_once_across_instances(looping, feedback):
    loops = [LearningLoop(looping()) for _ in range(2)]
    assert [loop.tick() for loop in loops] == [None, None]  # nothing came in yet
    feedback.add_events([Event(f"r{n}", "s1", "click", NOW - n) for n in range(25)])
    done: list = []
    threads = [threading.Thread(target=lambda loop=loop: done.append(loop.tick())) for loop in loops]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(done, key=str) == [None, TRAINING]  # one instance started it, the other found it running
    assert len(feedback.jobs()) == 1 and [e["kind"] for e in feedback.loop_events()] == [TRAINING]


def test_each_training_reads_the_events_since_the_last_one_that_ran_to_its_end(looping, feedback):
    """The window stays bounded: not since the active version, which a run of rolled-back candidates leaves ever
    further behind; a failed training's window is read again by the next."""
    service = looping()
    loop = LearningLoop(service)

    def train_after_clicks(status: str) -> Job:
        feedback.add_events([Event(f"r{n}", "s1", "click", service.clock()) for n in range(25)])
        service.later(60)
        assert loop.tick() == TRAINING
        job = next(j for j in feedback.jobs() if j.status == "running")
        feedback.update_job(dataclasses.replace(job, status=status, finished_at=service.clock()))
        service.later(60)
        return job

    def window(job: Job) -> str:
        return job.args[job.args.index("--since") + 1]

    first = train_after_clicks("succeeded")
    assert window(first) == "last"  # the first: since the active version was trained
    second = train_after_clicks("failed")
    assert float(window(second)) == first.created_at
    third = train_after_clicks("succeeded")
    assert float(window(third)) == first.created_at  # the failed one taught nothing: its events are read again
    fourth = train_after_clicks("succeeded")
    assert float(window(fourth)) == third.created_at
    said = [e["details"]["since"] for e in feedback.loop_events()][::-1]  # the loop's history names each window
    assert said == [window(job) for job in (first, second, third, fourth)]


def test_a_candidate_is_ab_tested_and_a_worse_one_rolled_back(looping, feedback, tmp_path):
    """The training published a candidate (inactive): the loop starts an A/B test on a share of readers, feeds
    say their arm, and when the treatment's readers click less the always-valid test rolls it back."""
    service = looping()
    loop = LearningLoop(service)
    candidate = service.adapters.publish("clicks", random_lora(tmp_path / "two", seed=2), activate=False)
    (candidate.path / "card.json").write_text('{"candidate": true}')
    assert loop.tick() == STARTED
    experiment = loop.experiment()
    assert experiment.arms["treatment"].adapter == candidate.key and experiment.arms["control"].adapter == "clicks@1"
    assert service.recommender.arm("anyone") is not None  # every feed is in an arm now
    rng = random.Random(0)
    for n in range(400):  # readers of each arm and what they did: the treatment's click half as often
        reader = f"u{n}"
        arm = experiment.arm_of(service.pseudonyms(reader))
        items = tuple(RankedItem(p, f"s{p}", "t", 0.5, {}, 1.0) for p in range(1, 7))
        ranking = f"{n:032x}"
        feedback.record_ranking(RankingRecord(ranking, reader, NOW + n, "pointwise", "v", "fake", "m", None, {}, "p",
                                              False, items, arm=arm, experiment=experiment.name))  # fmt: skip
        rate = 0.3 if arm == "control" else 0.15
        feedback.add_events([Event(reader, i.article_id, "click", NOW + n + 1, ranking_id=ranking)
                             for i in items if rng.random() < rate])  # fmt: skip
    service.later(1000)  # the feeds above are in the test's window now
    assert loop.tick() == "rollback"
    event = feedback.loop_events()[0]
    assert event["kind"] == ROLLED_BACK and event["adapter"] == candidate.key
    assert event["details"]["reason"] == "worse, significantly" and event["details"]["difference"] < 0
    assert service.adapters.resolve("clicks").key == "clicks@1"  # what everyone is served did not change
    assert loop.experiment() is None and service.recommender.arm("anyone") is None  # the test is over


def test_a_better_candidate_is_promoted_for_everyone(looping, feedback, tmp_path):
    service = looping()
    loop = LearningLoop(service)
    candidate = service.adapters.publish("clicks", random_lora(tmp_path / "two", seed=2), activate=False)
    (candidate.path / "card.json").write_text('{"candidate": true}')
    loop.tick()
    experiment = loop.experiment()
    rng = random.Random(1)
    for n in range(600):
        reader = f"u{n}"
        arm = experiment.arm_of(service.pseudonyms(reader))
        items = tuple(RankedItem(p, f"s{p}", "t", 0.5, {}, 1.0) for p in range(1, 7))
        feedback.record_ranking(RankingRecord(f"{n:032x}", reader, NOW + n, "pointwise", "v", "fake", "m", None, {},
                                              "p", False, items, arm=arm, experiment=experiment.name))  # fmt: skip
        rate = 0.15 if arm == "control" else 0.3
        feedback.add_events([Event(reader, i.article_id, "click", NOW + n + 1, ranking_id=f"{n:032x}")
                             for i in items if rng.random() < rate])  # fmt: skip
    service.later(1000)
    assert loop.tick() == "promote"
    assert feedback.loop_events()[0]["kind"] == PROMOTED
    assert service.adapters.resolve("clicks").key == candidate.key


class Judging(FakeBackend):
    """Scores by adapter: the served one ranks clicks first; "candidate" ranks them first on the new window but
    last on the older reference set (it forgot)."""

    def score(self, requests):
        out = []
        for r in requests:
            clicked = r.suffix.endswith("+")
            forgot = r.adapter == "candidate" and r.prefix == "old"
            out.append(0.9 if clicked != forgot else 0.1)
        return out


def test_the_gate_refuses_a_candidate_that_forgot_an_older_reference_set(tmp_path):
    def examples(prefix: str) -> list[Example]:
        return [Example(prefix, f"{n}{'+' if n % 3 == 0 else '-'}", int(n % 3 == 0), f"g{n // 6}") for n in range(60)]

    backend = Judging()
    new_window = gate.gate(backend, examples("new"), "candidate", "clicks@1")
    assert new_window.new.auc == new_window.current.auc == 100.0
    kept = gate.forgetting(backend, {"clicks@1": examples("old")}, "candidate", "clicks@1", margin=1.0)
    assert not kept.passed and kept.checks == (("clicks@1", 0.0, 100.0),) and "FORGOTTEN" in kept.summary()
    assert gate.forgetting(backend, {"clicks@1": examples("new")}, "candidate", "clicks@1", margin=1.0).passed
    folder = tmp_path / "v"
    folder.mkdir()
    assert 10 <= gate.keep_reference(folder, examples("old"), 10) <= 16  # whole groups of 6
    assert (folder / gate.REFERENCE).is_file()


def test_a_continual_adapter_starts_from_the_active_one(tmp_path):
    """`newsrank train --from-active` at a learning rate of 0 gives back the active adapter's weights exactly."""
    env = {**os.environ, "NEWSRANK_DATA_DIR": str(tmp_path / "data"), "NEWSRANK_MODEL_CACHE": str(MODEL_CACHE)}

    def train(*more: str) -> subprocess.CompletedProcess:
        args = [sys.executable, "-m", "serve.cli", "train", "--name", "clicks", "--mind-news", str(MIND / "news.tsv"),
                "--mind-behaviors", str(MIND / "behaviors.tsv"), "--part", "all", "--limit", "4", "--set", "rank=4",
                "--force", *more]  # fmt: skip
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr
        return done

    train()
    active = tmp_path / "data" / "adapters" / "clicks" / "v1"
    again = train("--from-active", "--set", "learning_rate=0", "--output", str(tmp_path / "run2"))
    assert f"continuing from {active}" in again.stdout
    before = load_file(active / "adapter_model.safetensors")
    after = load_file(tmp_path / "run2" / "adapter" / "adapter_model.safetensors")
    assert before.keys() == after.keys() and all((before[k] == after[k]).all() for k in before)
    assert any(v.abs().sum() > 0 for k, v in before.items() if "lora_B" in k)  # a trained adapter, not zeros


def test_the_loop_starts_from_nothing_and_tests_its_first_version_against_the_base_model(
    settings, corpus_store, feedback, tmp_path
):
    """A name not trained yet starts the service when a schedule is set (a typo does not: no schedule), and its
    first version is an A/B test against the base model, not served to everyone untested."""
    fresh = settings.model_copy(update={"adapter": "news", "retrain_every_events": 20, "loop_treatment_share": 0.5})
    registry = AdapterRegistry(fresh.adapters_path, feedback, lambda: NOW)
    service = Newsrank(fresh, corpus_store, feedback, FakeBackend(), clock=lambda: NOW, adapters=registry)
    service.check_configuration()
    unscheduled = fresh.model_copy(update={"retrain_every_events": None})
    with pytest.raises(InvalidInput, match="no adapter named 'news'"):
        Newsrank(unscheduled, corpus_store, feedback, FakeBackend(), clock=lambda: NOW, adapters=registry
                 ).check_configuration()  # fmt: skip
    assert service.recommender.adapter_for("anyone", None) is None  # the base model serves the name meanwhile
    first = registry.publish("news", random_lora(tmp_path / "one", seed=1), activate=False)
    (first.path / "card.json").write_text('{"candidate": true}')
    service.check_configuration()  # a restart while the first version is on trial (or after its rollback)
    loop = LearningLoop(service)
    assert loop.tick() == STARTED
    event = feedback.loop_events()[0]
    assert (event["adapter"], event["details"]["control"]) == (first.key, None)
    experiment = loop.experiment()
    served = {experiment.arm_of(service.pseudonyms(f"u{n}")): service.recommender.adapter_for(f"u{n}", None)
              for n in range(40)}  # fmt: skip
    assert served == {"control": None, "treatment": first.key}
    with pytest.raises(NotFound):
        registry.resolve("news")  # nothing active until the test promotes it


def test_only_versions_that_served_everyone_are_references_against_forgetting(looping, feedback, tmp_path):
    """A candidate rolled back (or still on trial) never served everyone: a later version is not held to its
    reference set; the active version and a promoted one are."""
    service = looping()
    registry = service.adapters
    examples = [Example("p", f"{n}", n % 2, f"g{n}") for n in range(12)]
    gate.keep_reference(registry.resolve("clicks").path, examples, 10)
    versions = {}
    for seed in (2, 3, 4):
        version = registry.publish("clicks", random_lora(tmp_path / f"v{seed}", seed=seed), activate=False)
        (version.path / "card.json").write_text('{"candidate": true}')
        gate.keep_reference(version.path, examples, 10)
        versions[seed] = version.key
    feedback.add_loop_event(ROLLED_BACK, versions[2], {}, NOW)
    feedback.add_loop_event(PROMOTED, versions[3], {}, NOW)
    assert set(learning.reference_sets(registry, feedback, "clicks")) == {"clicks@1", versions[3]}
