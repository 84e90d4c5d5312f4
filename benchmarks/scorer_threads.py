"""How fast one core's background scorer drains its queue with 1, 2 or more scorer threads, side by side.

    NEWSRANK_THREADS=1 .venv/bin/python benchmarks/scorer_threads.py [--threads 1 2 4] [--readers 40] [--rounds 2]

Concurrent scorer threads' LLM calls are merged by the micro-batcher (llm/backends/batching.py) into one call, in
which the transformers backend packs each reader's candidates after their prefix, several readers in one sequence:
the readers share the call's fixed costs, and a thread builds its next reader's profile and candidates while the
other's call runs. Torch keeps one thread (`NEWSRANK_THREADS=1`): one core, however many scorer threads.

In process, on the demo corpus with the packaged LLM. Each round, for each thread count in turn, new readers with
two clicks are scored (their first scoring: about 30 candidates each), then each clicks once more and their queue
is drained again (cover first: the few new candidates, then the stale rest: the small tasks a click makes). The
same articles for every thread count within a round (scores are not shared between readers with the same
profile here, so each thread count does the same LLM work). Prints each drain's time and its ratio to the first thread
count's in the same round.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import threading
import time
from pathlib import Path

from harness import quiet_logs  # benchmarks/harness.py

from config.settings import Settings
from core.records import Event, ScoringTask
from feed.background_scorer import Scorer
from llm.models import offline
from serve import demo
from serve.service import Newsrank


def drain(service: Newsrank, threads: int) -> tuple[float, int]:
    """Seconds until the queue is empty with `threads` scorers, and the tasks they did."""
    done = [0] * threads

    def work(i: int) -> None:
        scorer = Scorer(service.recommender, f"bench/{i}")
        while scorer.run_once() is not None:
            done[i] += 1

    started = time.perf_counter()
    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return time.perf_counter() - started, sum(done)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--readers", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    offline()
    quiet_logs()
    with tempfile.TemporaryDirectory() as tmp:
        service = Newsrank.from_settings(Settings(data_dir=Path(tmp), scorer_threads=0, shared_scores=False))
        demo.seed(service.articles, service.feedback, service.clock(), show_progress=False)
        articles = [h.article.id for h in service.articles.recent(since=0.0, k=500)]
        drain(service, 1)  # the demo readers' own scoring, and the model warmed
        print("| round | scorer threads | first scoring: s (tasks) | vs first | after a click: s (tasks) | vs first |")
        print("|---:|---:|---:|---:|---:|---:|")
        for round_ in range(args.rounds):
            rng = random.Random(round_)
            picks = [rng.sample(articles, 3) for _ in range(args.readers)]
            base: tuple[float, float] | None = None
            for threads in args.threads:
                now = service.clock()
                readers = [f"r{round_}-{threads}-{i}" for i in range(args.readers)]
                pairs = list(zip(readers, picks, strict=True))
                service.feedback.add_events(
                    [Event(r, a, "click", now - 10 + k) for r, p in pairs for k, a in enumerate(p[:2])]
                )
                service.recommender.ask_scoring([ScoringTask("reader", r, now) for r in readers])
                first = drain(service, threads)
                service.feedback.add_events([Event(r, p[2], "click", now) for r, p in pairs])
                service.recommender.ask_scoring([ScoringTask("reader", r, now) for r in readers])
                click = drain(service, threads)
                base = base or (first[0], click[0])
                print(f"| {round_ + 1} | {threads} | {first[0]:.1f} ({first[1]}) | {base[0] / first[0]:.2f}x "
                      f"| {click[0]:.1f} ({click[1]}) | {base[1] / click[0]:.2f}x |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
