"""Simulated readers over simulated days: the learning loop against a frozen zero-shot product, side by side.

    .venv/bin/python benchmarks/simulate.py [--days 7] [--readers 60] [--visits 2] [--seed 0]
    .venv/bin/python benchmarks/simulate.py --bad-candidate --days 2      # a shuffled-label candidate

Readers are MIND users of ../shared/data/mind-train: each reader's latent preference is their real history (the
mean embedding of the titles they read, and their share of reading per category), and an article's true
relevance to them is σ(6 (cos(article, their history) − 0.35) + 2 share(its category)) × 0.6. The simulator
knows nothing of the models: every morning, new articles of that week's news are published through the API;
`--visits` times a day every reader asks for a feed of 10 through the API and clicks through a position-biased
model (the k-th place is looked at with probability k^-0.8, then clicked with the article's true relevance),
sends the clicks (naming the feed) and now and then a rating. Two services run on the same readers, articles and
random draws: "frozen" (the zero-shot model, the hand-set weights, no loop) and "loop" (NEWSRANK_ADAPTER names an
adapter not trained yet and NEWSRANK_RETRAIN_EVERY_EVENTS is set: it retrains, gates, A/B-tests and promotes by
itself, no human step). Between visits each service's workers run until idle: the background scorer, then the
loop (a training it starts is waited for). Prints each day's click-through rate (clicks per item shown) of both,
and the loop's history. `--bad-candidate`: no retraining; after the first visit a candidate trained on the loop's
own examples with shuffled labels is forced past its gate, and the run reports when the loop rolled it back and
how many readers were ever served by it. `--fixed-weights JSON`: the second service learns nothing and serves
these blend weights from the start (the true relevance's own terms, say): the most that learning the blend's
weights could lift. `--onboard`: readers arrive with their past (their MIND history's clicks, nine days before the
first), as a platform sends newsrank its readers' events; without it every reader starts unknown.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
from harness import quiet_logs, serving  # benchmarks/harness.py

from config.settings import Settings, Weights
from core.records import Article
from evaluation import replay
from llm.models import offline
from retrieval.embed import Embedder
from retrieval.ingest import read_mind_news
from serve.learning import PROMOTED, REFITTED, ROLLED_BACK, LearningLoop
from serve.service import Newsrank
from serve.worker import ScoringWorkers

WEEK = Path(__file__).resolve().parents[2] / "shared" / "data" / "mind-train"
KEY = "simulation-key-0123456789abcdef"
EXAMINED = 0.8  # the k-th place is looked at with probability k^-EXAMINED
SERVICES = ("frozen", "loop")


class Reader:
    def __init__(self, user_id: str, centroid: np.ndarray, shares: dict[str, float], history: list[dict]) -> None:
        self.user_id, self.centroid, self.shares, self.history = user_id, centroid, shares, history

    def relevance(self, vector: np.ndarray, category: str) -> float:
        cos = float(vector @ self.centroid / (np.linalg.norm(vector) * np.linalg.norm(self.centroid) + 1e-9))
        return 0.6 / (1 + math.exp(-(6 * (cos - 0.35) + 2 * self.shares.get(category, 0.0))))


def world(readers: int, per_day: int, days: int, seed: int) -> tuple[list[Reader], list[list[dict]], dict]:
    """The readers (with their real histories), each day's new articles, and the published articles' embeddings
    (only what the run needs is embedded)."""
    impressions, _ = replay.read_behaviors(WEEK / "behaviors.tsv")
    news = {r.id: r for r in read_mind_news(WEEK / "news.tsv", 0.0) if isinstance(r, Article)}
    rng = random.Random(seed)
    users = {}
    for imp in impressions:
        known = [a for a in imp.history if a in news]
        if imp.user_id and len(known) >= 5 and imp.user_id not in users:
            users[imp.user_id] = known
    chosen = rng.sample(sorted(users), readers)
    candidates = sorted({c for imp in impressions for c in imp.candidates if c in news})
    rng.shuffle(candidates)
    published = candidates[: days * per_day]
    needed = sorted({a for user in chosen for a in users[user]} | set(published))
    vectors = dict(zip(needed, Embedder().encode([news[a].text for a in needed]), strict=True))

    def payload(a: str) -> dict:
        return {"id": a, **{f: getattr(news[a], f) for f in ("title", "abstract", "category", "subcategory")}}

    people = []
    for user in chosen:
        history = users[user]
        counts = Counter(news[a].category for a in history)
        shares = {c: n / len(history) for c, n in counts.items()}
        centroid = np.mean([vectors[a] for a in history], axis=0)
        people.append(Reader(f"sim-{user}", centroid, shares, [payload(a) for a in history]))
    daily = [[payload(a) for a in published[d * per_day : (d + 1) * per_day]] for d in range(days)]
    return people, daily, {a: vectors[a] for a in published}


def onboard(http: httpx.Client, people: list[Reader]) -> None:
    """Readers who arrive with their past, as a platform would send it: the articles of their MIND history,
    published ten days before (outside the feeds' window), and their clicks on them, nine days before."""
    now = time.time()
    articles = list({a["id"]: {**a, "published_at": now - 10 * 86400} for r in people for a in r.history}.values())
    for start in range(0, len(articles), 500):
        http.post("/v1/articles", json={"articles": articles[start : start + 500]}).raise_for_status()
    events = [{"user_id": r.user_id, "article_id": a["id"], "type": "click", "ts": now - 9 * 86400 + i}
              for r in people for i, a in enumerate(r.history)]  # fmt: skip
    http.post("/v1/events", json={"events": events}).raise_for_status()


def service(folder: Path, learning: bool, args: argparse.Namespace) -> tuple[Newsrank, LearningLoop | None]:
    keys = [{"name": "sim", "key": KEY, "scope": "admin"}]
    fixed = learning and bool(args.fixed_weights)  # no loop: the second service serves these weights from the start
    looping = learning and not fixed
    settings = Settings(
        data_dir=folder, api_keys=json.dumps(keys), scorer_threads=0, adapter="sim" if looping else None,
        ranker="sim" if looping else None, retrain_every_events=args.retrain_every if looping else None,
        loop_treatment_share=args.treatment_share, loop_min_feeds=args.min_feeds, loop_max_feeds=args.max_feeds,
        recency_hours=24 * 3, feeds_per_reader_per_minute=1000, position_explore_share=0.05, candidates=30,
        **({"weights": Weights(**json.loads(args.fixed_weights))} if fixed else {}),
    )  # fmt: skip
    built = Newsrank.from_settings(settings)
    return built, LearningLoop(built) if looping else None


def visit(http: httpx.Client, reader: Reader, vectors: dict, rng: random.Random) -> tuple[Counter, str | None]:
    """A reader asks for a feed, looks down it, clicks, sometimes rates. Returns the feed's items shown, clicks
    and expected clicks (the chance each place is looked at times the item's true relevance: the click-through
    rate without the draws' noise), and the adapter that scored it."""
    feed = http.post("/v1/feed", json={"user_id": reader.user_id, "explain": False})
    feed.raise_for_status()
    body, events, tally = feed.json(), [], Counter()
    for item in body["items"]:  # what the reader looked at: an impression, perhaps a click
        looked, true = item["position"] ** -EXAMINED, reader.relevance(vectors[item["article_id"]], item["category"])
        tally["shown"] += 1
        tally["expected"] += looked * true
        if rng.random() >= looked:
            continue
        kind = "click" if rng.random() < true else "impression"
        tally["clicked"] += kind == "click"
        events.append({"user_id": reader.user_id, "article_id": item["article_id"], "type": kind,
                       "ranking_id": body["ranking_id"]})  # fmt: skip
    if rng.random() < 0.2:
        liked = any(e["type"] == "click" for e in events)
        events.append({"user_id": reader.user_id, "type": "rating",
                       "ranking_id": body["ranking_id"], "value": 5 if liked else 2})  # fmt: skip
    if events:
        http.post("/v1/events", json={"events": events}).raise_for_status()
    return tally, body["adapter"]


def best_possible(reader: Reader, pool: list[dict], vectors: dict, k: int = 10) -> float:
    """Expected clicks per item of the feed a reader's true relevance would rank from the articles on offer."""
    ranked = sorted((reader.relevance(vectors[a["id"]], a["category"]) for a in pool), reverse=True)[:k]
    return sum(p**-EXAMINED * r for p, r in enumerate(ranked, start=1)) / k


def settle(built: Newsrank, loop: LearningLoop | None) -> None:
    """What the service's workers do between visits: score what waits, then let the loop decide, train, test."""
    ScoringWorkers(built.recommender, 1).run_until_idle()
    while loop is not None and loop.tick() is not None:
        wait_for_training(built)


def bad_candidate(built: Newsrank, folder: Path) -> str:
    """An adapter trained on the loop's own examples with their labels shuffled, forced past its gate and put to
    the loop's test as a candidate: what the loop must roll back."""
    from adapters import export

    s = built.settings
    examples = list(export.from_feedback(built.feedback, built.articles, built.backend, s, -math.inf,
                                         built.pseudonyms))  # fmt: skip
    labels = [e.label for e in examples]
    random.Random(1).shuffle(labels)
    data = folder / "shuffled.jsonl"
    export.write_examples(data, [replace(e, label=label) for e, label in zip(examples, labels, strict=True)])
    command = [sys.executable, "-m", "serve.cli", "train", "--name", "sim", "--data", str(data), "--candidate",
               "--force", "--output", str(folder / "shuffled")]  # fmt: skip
    subprocess.run(command, env={**os.environ, **s.as_env()}, check=True, capture_output=True, text=True)
    return built.adapters.versions("sim")[-1].key


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--readers", type=int, default=60)
    parser.add_argument("--visits", type=int, default=2, help="feeds each reader asks for a day")
    parser.add_argument("--articles-per-day", type=int, default=120)
    parser.add_argument("--retrain-every", type=int, default=100, help="engagement events between trainings")
    parser.add_argument("--treatment-share", type=float, default=0.1, help="readers in a candidate's arm")
    parser.add_argument("--min-feeds", type=int, default=40, help="feeds an arm before the test may decide")
    parser.add_argument("--max-feeds", type=int, default=400, help="feeds an arm without a difference: roll back")
    parser.add_argument(
        "--bad-candidate",
        action="store_true",
        help="no retraining: after the first visit, a candidate trained on shuffled labels is tested",
    )
    parser.add_argument(
        "--fixed-weights",
        metavar="JSON",
        help='no loop: the second service serves these blend weights from the start, e.g. {"similarity": 0.6}',
    )
    parser.add_argument("--onboard", action="store_true", help="readers arrive with their history's clicks")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.bad_candidate:
        args.retrain_every = 10**9
    offline()
    quiet_logs()
    people, daily, vectors = world(args.readers, args.articles_per_day, args.days, args.seed)
    print("| day | frozen CTR | loop CTR | lift | expected: frozen | loop | lift | best possible "
          "| loop: served adapter, what it did | minutes |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    total = {name: Counter() for name in SERVICES}
    bad, bad_readers, started, best = None, set(), time.monotonic(), []
    put_at, decided, day_started = None, None, time.time()
    with tempfile.TemporaryDirectory() as tmp:
        services = {name: service(Path(tmp) / name, name == "loop", args) for name in SERVICES}
        with serving(services["frozen"][0]) as frozen_url, serving(services["loop"][0]) as loop_url:
            # the app builds a learning loop of its own for its workers (none run here: scorer_threads=0) and
            # hooks it to the feeds; the loop this simulation ticks must be the one feeds ask, or its decisions
            # reach them only when the app's loop reads the store again, up to 10 s later (whole visits)
            looped, loop = services["loop"]
            if loop is not None:
                looped.recommender.running_experiment = loop.experiment
            clients = {name: httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=600)
                       for name, url in zip(SERVICES, (frozen_url, loop_url), strict=True)}  # fmt: skip
            if args.onboard:
                for http in clients.values():
                    onboard(http, people)
            for day, articles in enumerate(daily, start=1):
                today = {name: Counter() for name in SERVICES}
                pool = [a for d in daily[:day] for a in d]  # all published so far: the days pass in minutes
                best.append(sum(best_possible(r, pool, vectors) for r in people) / len(people))
                for name, http in clients.items():  # the morning's news, scored for the readers it knows
                    http.post("/v1/articles", json={"articles": articles}).raise_for_status()
                    settle(*services[name])
                for time_of_day in range(args.visits):
                    for name, http in clients.items():  # the same draws for both services: a paired comparison
                        rng = random.Random(args.seed * 1_000_003 + day * 101 + time_of_day)
                        for reader in people:
                            tally, adapter = visit(http, reader, vectors, rng)
                            today[name].update(tally)
                            if bad is not None and adapter == bad:
                                bad_readers.add(reader.user_id)
                        if name == "loop" and args.bad_candidate and bad is None:
                            bad, put_at = bad_candidate(services["loop"][0], Path(tmp)), (day, time_of_day + 1)
                        settle(*services[name])
                        if name == "loop" and bad is not None and decided is None:
                            decided = decision(services["loop"][0], bad, (day, time_of_day + 1))
                for name in SERVICES:
                    total[name].update(today[name])
                active = services["loop"][0].recommender.default_adapter()
                history = [step(e) for e in services["loop"][0].feedback.loop_events(50)][::-1]
                now = time.time()  # a training that ends after this is the next day's
                did = ", ".join(history[-4:] + trainings(services["loop"][0], day_started, now))
                day_started = now
                print(f"| {day} | {rates(today)} | {best[-1]:.4f} | {active or 'base model'}; {did} "
                      f"| {(time.monotonic() - started) / 60:.0f} |", flush=True)  # fmt: skip
    print(f"| all | {rates(total)} | {sum(best) / len(best):.4f} | | |")
    if bad is not None:
        print(f"\nshuffled-label candidate {bad}, put to the test after day {put_at[0]}'s visit {put_at[1]}: "
              f"served to {len(bad_readers)} of {len(people)} readers ({len(bad_readers) / len(people):.0%}); "
              f"{decided or 'undecided'}; the loop's history: {', '.join(history)}")  # fmt: skip


def step(event: dict) -> str:
    """A loop event in the table: its kind and adapter, or for a refit the model and what it published."""
    if event["kind"] == REFITTED:
        d = event["details"]
        return f"{d['model']} refitted ({d['published'] if d['published'] != 'no' else 'not published'})"
    return f"{event['kind']} {event['adapter'] or ''}".strip()


def trainings(built: Newsrank, since: float, until: float) -> list[str]:
    """What became of the loop's trainings that ended between two times: each one's status and the last line it
    wrote (what its gate said, or why it was refused)."""
    ended = sorted((j for j in built.feedback.jobs() if j.kind == "train" and since <= (j.finished_at or 0) < until),
                   key=lambda j: j.finished_at)  # fmt: skip
    last = {j.job_id: ((j.log_tail or "").strip().splitlines() or [""])[-1][:120] for j in ended}
    return [f"training {j.status} ({last[j.job_id]})" for j in ended]


def decision(built: Newsrank, candidate: str, when: tuple[int, int]) -> str | None:
    """The loop's verdict on a candidate, if it has one, with its reason and when the simulation saw it."""
    for event in built.feedback.loop_events(50):
        if event["adapter"] == candidate and event["kind"] in (PROMOTED, ROLLED_BACK):
            d = event["details"]
            return f"{event['kind']} after day {when[0]}'s visit {when[1]} ({d['reason']}, feeds an arm {d['feeds']})"
    return None


def rates(tallies: dict[str, Counter]) -> str:
    """The table's cells: clicks per item shown of both services and the lift, then the same for expected clicks."""
    cells = []
    for measure in ("clicked", "expected"):
        frozen, loop = (tallies[n][measure] / max(tallies[n]["shown"], 1) for n in SERVICES)
        cells += [f"{frozen:.4f}", f"{loop:.4f}", f"{loop / max(frozen, 1e-9) - 1:+.1%}"]
    return " | ".join(cells)


def wait_for_training(built: Newsrank, timeout: float = 3600) -> None:
    deadline = time.monotonic() + timeout
    while any(j.status == "running" for j in built.feedback.jobs()) and time.monotonic() < deadline:
        time.sleep(2)


if __name__ == "__main__":
    main()
