"""What the operator's stats cost as a store grows, on SQLite and PostgreSQL side by side.

    .venv/bin/python benchmarks/operator_stats.py [--feeds 2000,20000] [--items 10]

Fills each store with `--feeds` ranking records of `--items` items over a week, two experiment arms, 5 % of them
explored, and per feed about one click, a like in a tenth, a rating in a fifth (all naming their ranking). Then
times `evaluation.stats.report` by arm over the week (what `GET /v1/stats?by=arm` and the dashboard run) against the
baseline of reading the same feeds' ranking records one by one as `newsrank ranker fit` does
(`FeedbackStore.rankings_for`), in the same process.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from dataclasses import asdict

from config.experiment import Experiment
from core.records import Event, RankedItem, RankingRecord
from evaluation import stats
from store import open_store
from store.throwaway import ThrowawayPostgres

NOW = 1_767_000_000.0
WEEK = 7 * 86400
EXPERIMENT = Experiment(name="bench", arms={"control": {}, "treatment": {}})


def fill(store, feeds: int, items: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    heads, rows, events = [], [], []
    for n in range(feeds):
        at = NOW - WEEK + WEEK * n / feeds
        ranked = tuple(
            RankedItem(p, f"a{rng.randrange(500)}", "title", 0.5, {"similarity": 0.5}, rng.random() * 48,
                       category=rng.choice(("news", "sports", "food", "tech")))
            for p in range(1, items + 1)
        )  # fmt: skip
        record = RankingRecord(f"r{n}", f"u{n % 997}", at, "pointwise", "v", "b", "m", None, {}, "p", False, ranked,
                               arm=rng.choice(("control", "treatment")), intra_list_distance=rng.random(),
                               explored_pair=rng.randint(1, items - 1) if rng.random() < 0.05 else None)  # fmt: skip
        heads.append({k: v for k, v in asdict(record).items() if k != "items"})
        rows += [{"ranking_id": record.ranking_id, **asdict(i)} for i in ranked]
        clicked = ranked[min(int(rng.expovariate(0.5)), items - 1)]
        events.append(Event(record.user_id, clicked.article_id, "click", at + 5, ranking_id=record.ranking_id))
        if rng.random() < 0.1:
            events.append(Event(record.user_id, clicked.article_id, "like", at + 6, ranking_id=record.ranking_id))
        if rng.random() < 0.2:
            events.append(Event(record.user_id, "", "rating", at + 7, ranking_id=record.ranking_id,
                                value=rng.randint(1, 5)))  # fmt: skip
    with store.transaction() as tx:
        tx.insert("rankings", heads)
        tx.insert("ranking_items", rows)
    store.add_events(events)


def timed(work, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--feeds", default="2000,20000")
    parser.add_argument("--items", type=int, default=10)
    args = parser.parse_args()
    print(f"{'store':<10} {'feeds':>7} {'report s':>9} {'records s':>10} {'ratio':>6}")
    postgres = ThrowawayPostgres()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            run(args, tmp, postgres)
    finally:
        postgres.stop()


def run(args: argparse.Namespace, tmp: str, postgres: ThrowawayPostgres) -> None:
    for feeds in (int(f) for f in args.feeds.split(",")):
        for name, url in (("sqlite", f"sqlite:///{tmp}/{feeds}.sqlite3"), ("postgresql", postgres.new_database())):
            store = open_store(url)
            fill(store, feeds, args.items)
            report = timed(lambda s=store: stats.report(s, NOW - WEEK, NOW, NOW, "day", True, (), EXPERIMENT))
            users = store.user_ids(NOW - WEEK)
            records = timed(lambda s=store, u=users: [s.rankings_for(x) for x in u], repeats=1)
            print(f"{name:<10} {feeds:>7} {report:>9.3f} {records:>10.3f} {records / report:>6.1f}")
            store.close()


if __name__ == "__main__":
    main()
