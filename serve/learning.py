"""The learning loop, running itself: retrain on schedule, put what passes the gate to an A/B test, and let an
always-valid test promote it or roll it back. No engineer on call, and no worse model served to everyone.

    engagements since the last training ≥ RETRAIN_EVERY_EVENTS, or RETRAIN_AT (HH:MM UTC) passed today
        → a training job (one across every instance: the job lock), continual from the active adapter, on the
          events since the last training (the first: since the active version was trained); the gate judges it
          on the new window and, against forgetting, on the reference sets of the versions before
          (adapters/gate.py); what passes is published inactive. Beside it the served tower is trained again
          on the logs and the learned ranker refitted, each published where its gate passes
    → a candidate: the learned ranker is refitted (published where its gate passes), and an A/B test starts,
      LOOP_TREATMENT_SHARE of readers
    → evaluation/sequential.py decides, as often as it is asked: promote (the candidate becomes active for
      everyone), or roll back (a worse arm, a guardrail's rise, or no difference by the horizon)

Every step is a loop event in the shared store (`loop_events`), with its evidence (a refit of the tower or the
ranker too, whether its gate published it or not): the dashboard shows the history,
/metrics counts the decisions. The workers (`newsrank worker`, the scorer threads of `newsrank serve`) call `tick`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from adapters import export, gate
from config.experiment import Experiment
from core.errors import Conflict, InvalidInput, NotFound
from core.records import FeedOutcome
from evaluation import sequential
from feed import learned_ranker, tower_fit

if TYPE_CHECKING:
    from adapters.registry import AdapterRegistry
    from core.stores import FeedbackStore
    from serve.service import Newsrank

log = logging.getLogger("newsrank.learning")

# the loop events, in the order they come
TRAINING, CANDIDATE, REFUSED, STARTED, PROMOTED, ROLLED_BACK = (
    "training", "candidate", "refused", "experiment", "promoted", "rolled-back"
)  # fmt: skip
REFITTED = "refitted"  # the tower or the ranker fitted again on the logs, published only past its gate
DECISIONS = (PROMOTED, ROLLED_BACK)
LOOP_PREFIX = "loop-"  # the names of the loop's experiments


class LearningLoop:
    def __init__(self, service: Newsrank, clock: Callable[[], float] | None = None) -> None:
        self.service = service
        self.clock = clock or service.clock
        self._experiment: tuple[float, Experiment | None] = (-math.inf, None)
        service.recommender.running_experiment = self.experiment

    # -- what runs now ------------------------------------------------------------------------------------
    def experiment(self) -> Experiment | None:
        """The loop's A/B test running now (read from the shared store at most every 10 s), if any."""
        read_at, running = self._experiment
        if time.monotonic() - read_at > 10:
            running = self._running()[0]
            self._experiment = (time.monotonic(), running)
        return running

    def _running(self) -> tuple[Experiment | None, dict[str, Any] | None]:
        """The experiment the history says is running (started, and not decided since), and its start."""
        for event in self.service.feedback.loop_events(50):
            if event["kind"] in DECISIONS:
                return None, None
            if event["kind"] == STARTED:
                d = event["details"]
                share = self.service.settings.loop_treatment_share
                experiment = Experiment(
                    name=d["experiment"], split=[round(100 * (1 - share)), round(100 * share)],
                    arms={"control": {"adapter": d["control"]}, "treatment": {"adapter": event["adapter"]}},
                )  # fmt: skip
                return experiment, event
        return None, None

    def record(self, kind: str, adapter: str | None, **details: Any) -> None:
        self.service.feedback.add_loop_event(kind, adapter, details, self.clock())
        self._experiment = (-math.inf, None)  # read again at the next feed
        log.info("learning loop: %s %s %s", kind, adapter or "", details)

    # -- one step -----------------------------------------------------------------------------------------
    def tick(self) -> str | None:
        """Do what is due: decide a running A/B test; else start one for a new candidate; else start retraining
        when it is due. Returns what was done, if anything."""
        s = self.service.settings
        if not s.learning_loop or s.experiment is not None or not s.adapter:  # an operator's experiment first
            return None
        experiment, started = self._running()
        if experiment is not None:
            return self.decide(experiment, started)
        candidate = self._new_candidate()
        if candidate is not None:
            return self.start_experiment(candidate)
        return self.retrain_if_due()

    def retrain_if_due(self) -> str | None:
        s = self.service.settings
        jobs = self.service.feedback.jobs()
        if any(j.status == "running" for j in jobs):
            return None
        last = max((j.created_at for j in jobs if j.kind == "train"), default=None)
        learned = max((j.created_at for j in jobs if j.kind == "train" and j.status == "succeeded"), default=None)
        now = self.clock()
        due_events = (
            s.retrain_every_events is not None
            and self.service.feedback.count_engagements(last if last is not None else -math.inf)
            >= s.retrain_every_events
        )
        due_time = s.retrain_at is not None and _passed_today(s.retrain_at, now) > (last or -math.inf)
        if not (due_events or due_time):
            return None
        name = s.adapter.partition("@")[0]
        # the window: the events since the last training that ran to its end (its candidate, tested or not, saw
        # those before); the first, since the active version. Bounded however many candidates were rolled back
        since = "last" if learned is None else str(learned)
        try:
            job = self.service.jobs.start(name, since, (), continual=True, candidate=True)
        except Conflict:  # another instance started it first
            return None
        self.record(TRAINING, name, job=job.job_id, reason="events" if due_events else "time", since=since)
        self.refit_tower()  # a minute here, while the adapter trains in its job
        self.refit_ranker()  # learns from the feeds since, whether or not the adapter's candidate passes
        return TRAINING

    def _new_candidate(self) -> str | None:
        """A version the last training published inactive (its card says it passed the gate), not yet tested."""
        name = self.service.settings.adapter.partition("@")[0]
        tested = {e["adapter"] for e in self.service.feedback.loop_events(200) if e["kind"] in (STARTED, REFUSED)}
        for version in reversed(self.service.adapters.versions(name)):
            if version.active:
                return None  # nothing newer than the active version
            if version.key not in tested and version.card().get("candidate"):
                return version.key
        return None

    def start_experiment(self, candidate: str) -> str:
        s = self.service.settings
        name = candidate.partition("@")[0]
        try:
            control = self.service.adapters.resolve(name).key
        except NotFound:  # the first version of a name is tested against the base model its control arm serves
            control = None
        self.refit_ranker()
        experiment = f"{LOOP_PREFIX}{candidate}"
        self.record(STARTED, candidate, experiment=experiment, control=control, share=s.loop_treatment_share)
        return STARTED

    def refit_ranker(self) -> None:
        """Refit the served ranker on the logs (its LLM fit carries to a candidate: the same adapter's name)."""
        s = self.service.settings
        if not s.ranker or s.ranker == "none" or s.ranker.endswith(".json"):
            return
        registry = learned_ranker.RankerRegistry(s.adapters_path / "rankers")
        try:
            done = learned_ranker.refit(
                self.service.feedback, registry, s.ranker.partition("@")[0], self.clock() - 30 * 86400,
                s.weights.frozen(), split=self.service.pseudonyms.split, reader_share=s.fit_reader_share,
                key_share=s.fit_key_share, fitted_on={"source": "learning loop"},
            )  # fmt: skip
        except InvalidInput as exc:  # too few rankings with clicks yet: the ranker stays as it is
            log.info("learning loop: ranker not refitted (%s)", exc)
            return
        self._refitted("ranker", s.ranker.partition("@")[0], done.version, done.decision)

    def _refitted(self, model: str, name: str, version: int | None, decision: learned_ranker.Decision) -> None:
        published = f"{name}@{version}" if version is not None else "no"
        self.record(REFITTED, None, model=model, name=name, published=published, **decision.evidence())

    def refit_tower(self) -> tower_fit.Refit | None:
        """Train the served tower again on the logs (feed/tower_fit.py), published where its gate passes: no worse
        than the one serving, reader by reader, on held-out readers' clicks. Not for a tower file, nor without one
        (no article has a reading)."""
        s = self.service.settings
        served = self.service.recommender.served_tower()
        if served is None or not s.tower or tower_fit.is_file_reference(s.tower):
            return None
        try:
            done = tower_fit.refit(
                self.service.feedback, self.service.articles, tower_fit.registry_of(s.adapters_path),
                s.tower.partition("@")[0], self.clock() - 30 * 86400, served, split=self.service.pseudonyms.split,
                reader_share=s.fit_reader_share, key_share=s.fit_key_share, progress=False,
            )  # fmt: skip
        except InvalidInput as exc:  # too few rankings with readings and clicks yet: the tower stays as it is
            log.info("learning loop: tower not refitted (%s)", exc)
            return None
        self._refitted("tower", s.tower.partition("@")[0], done.version, done.decision)
        return done

    def decide(self, experiment: Experiment, started: dict[str, Any]) -> str | None:
        s = self.service.settings
        outcomes = [
            o for o in self.service.feedback.feed_outcomes(started["at"], self.clock() + 1)
            if o.experiment == experiment.name
        ]  # fmt: skip
        arms = {arm: sequential.Arm(metric(outcomes, arm), guardrail(outcomes, arm)) for arm in experiment.arms}
        decision = sequential.decide(arms["treatment"], arms["control"], s.loop_alpha, min_feeds=s.loop_min_feeds,
                                     max_feeds=s.loop_max_feeds)  # fmt: skip
        candidate = started["adapter"]
        if decision.verdict == "continue":
            return None
        if decision.verdict == "promote":
            self.service.adapters.activate(candidate)
        self.record(PROMOTED if decision.verdict == "promote" else ROLLED_BACK, candidate,
                    experiment=experiment.name, **decision.as_dict())  # fmt: skip
        return decision.verdict


def reference_sets(registry: AdapterRegistry, feedback: FeedbackStore, name: str, last: int = 3) -> dict:
    """The reference examples (adapters/gate.py) of the last versions of a name that served everyone: published
    active, or promoted by the loop. A candidate that was rolled back or is still on trial never served everyone,
    so there is nothing a new version could forget of it."""
    promoted = {e["adapter"] for e in feedback.loop_events(1000) if e["kind"] == PROMOTED}
    served = [v for v in registry.versions(name) if v.active or not v.card().get("candidate") or v.key in promoted]
    return {v.key: export.read_examples(v.path / gate.REFERENCE)
            for v in served[-last:] if (v.path / gate.REFERENCE).is_file()}  # fmt: skip


def metric(outcomes: list[FeedOutcome], arm: str) -> list[tuple[float, float]]:
    """Per feed of an arm: clicked items and items shown (the click-through rate the test compares)."""
    return [(float(len(o.clicked)), float(o.shown)) for o in outcomes if o.arm == arm]


def guardrail(outcomes: list[FeedOutcome], arm: str) -> list[tuple[float, float]]:
    """Per feed of an arm: the harm readers reported (dislikes, skips, ratings of 1 or 2) and items shown."""
    return [(float(o.dislikes + o.skips + sum(r <= 2 for r in o.ratings)), float(o.shown))
            for o in outcomes if o.arm == arm]  # fmt: skip


def _passed_today(at: str, now: float) -> float:
    """The time today (UTC) of "HH:MM" if it has passed, else the same time yesterday."""
    hours, minutes = (int(part) for part in at.split(":"))
    day = datetime.fromtimestamp(now, UTC).replace(hour=hours, minute=minutes, second=0, microsecond=0)
    moment = day.timestamp()
    return moment if moment <= now else moment - 86400
