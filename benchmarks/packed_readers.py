"""Several readers in one LLM call: packed into one sequence against their prefix caches copied per row.

    NEWSRANK_THREADS=1 .venv/bin/python benchmarks/packed_readers.py [--rounds 7]

A call holds several readers' candidates when concurrent feeds or scorer threads are merged by the micro-batcher
(llm/backends/batching.py). The transformers backend packs each reader's candidates after their prefix, readers one
after another in one sequence (`pack_readers`, the default), or computes the readers' prefixes in one padded pass
and continues each row from a copy of its prefix's cache (what it did before). Each call is timed both ways in turn
on the same requests; prints the median of the paired ratios and the largest difference in P(Yes).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from config.settings import Settings
from core.llm import ScoreRequest
from llm.models import offline
from serve.service import make_backend


def profile(n: int) -> str:
    titles = "".join(f"- Team {n} wins a thrilling overtime game against rival number {i}\n" for i in range(5))
    question = "Answer Yes or No: would this reader click each article below?"
    return f"Reader profile:\nInterests: sports, football, politics.\nRecently read:\n{titles}\n{question}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    offline()
    with tempfile.TemporaryDirectory() as tmp:
        backend = make_backend(Settings(data_dir=Path(tmp), micro_batching=False)).inner  # the transformers backend
        titles = [
            f"\nsports: Quarterback throws {i} touchdowns as the club clinches the division ->" for i in range(30)
        ]
        backend.score([ScoreRequest(profile(0), titles[0])])  # loaded and warm
        print("| readers in the call | candidates each | packed vs copied caches (median, paired) | largest ΔP(Yes) |")
        print("|---:|---:|---:|---:|")
        for candidates in (3, 8, 30):
            for readers in (2, 4):
                requests = [ScoreRequest(profile(r), t) for r in range(readers) for t in titles[:candidates]]
                ratios, apart = [], 0.0
                for _ in range(args.rounds):
                    timed = {}
                    for packed in (False, True):
                        backend.pack_readers = packed
                        started = time.perf_counter()
                        timed[packed] = backend.score(requests), time.perf_counter() - started
                    ratios.append(timed[False][1] / timed[True][1])
                    apart = max(apart, *(abs(a - b) for a, b in zip(timed[False][0], timed[True][0], strict=True)))
                print(f"| {readers} | {candidates} | {statistics.median(ratios):.2f}x | {apart:.3f} |", flush=True)


if __name__ == "__main__":
    main()
