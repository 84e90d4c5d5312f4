"""How much of the best possible feed the product's own candidates hold, for simulated readers as strangers.

    .venv/bin/python benchmarks/candidate_bound.py [--days 7] [--readers 60] [--visits 2] [--seed 0]

No service: the readers, articles and click model of benchmarks/simulate.py, with the candidate rule of
`Recommender.candidates` mimicked (24 of 30 nearest to the mean embedding of the reader's clicks and 6 of the day's
articles; a reader without a click: the 15 most clicked and 15 of the day's). Each feed is the 10 candidates the
reader's true relevance ranks first, so its expected click-through rate is the most any ranking of those
candidates could give (an adapter, a tower, a ranker: what the learning loop changes). Beside it, the same with
every published article as a candidate (the "best possible" of simulate.py) and with 60 candidates. Readers click
on what they are shown by the simulation's model, so what they click depends on the rule, as in the service.
"""

from __future__ import annotations

import argparse
import random
from collections import Counter
from collections.abc import Callable

import numpy as np
from simulate import EXAMINED, world  # benchmarks/simulate.py

from llm.models import offline

Rule = Callable[[set[str], list[str], list[str], list[str], Counter], list[str]]


def nearest_and_fresh(n: int, unit: dict[str, np.ndarray]) -> Rule:
    """The product's rule for `n` candidates (explore share 0.2)."""

    def rule(seen: set[str], clicked: list[str], pool: list[str], today: list[str], clicks: Counter) -> list[str]:
        unseen = [a for a in pool if a not in seen]
        if clicked:
            query = np.mean([unit[a] for a in clicked], axis=0)
            taken = sorted(unseen, key=lambda a: -float(unit[a] @ query))[: n - round(0.2 * n)]
        else:
            taken = sorted(unseen, key=lambda a: -clicks[a])[: n // 2]
        return taken + [a for a in today if a not in seen and a not in taken][: n - len(taken)]

    return rule


def every_article(seen: set[str], clicked: list[str], pool: list[str], today: list[str], clicks: Counter) -> list[str]:
    return [a for a in pool if a not in seen]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--readers", type=int, default=60)
    parser.add_argument("--visits", type=int, default=2)
    parser.add_argument("--articles-per-day", type=int, default=120)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    offline()
    people, daily, vectors = world(args.readers, args.articles_per_day, args.days, args.seed)
    category = {a["id"]: a["category"] for day in daily for a in day}
    unit = {a: v / np.linalg.norm(v) for a, v in vectors.items()}

    def truth(reader, article: str) -> float:
        return reader.relevance(vectors[article], category[article])

    print("| candidates, ranked by the true relevance | " + " | ".join(f"day {d}" for d in range(1, args.days + 1))
          + " | all |")  # fmt: skip
    print("|---|" + "---:|" * (args.days + 1))
    for name, rule in (("every published article", every_article), ("the product's 30", nearest_and_fresh(30, unit)),
                       ("60 by the same rule", nearest_and_fresh(60, unit))):  # fmt: skip
        clicks: Counter = Counter()
        seen = {r.user_id: set() for r in people}
        clicked = {r.user_id: [] for r in people}
        rates = []
        for day in range(1, args.days + 1):
            pool, today = [a["id"] for d in daily[:day] for a in d], [a["id"] for a in daily[day - 1]]
            expected = shown = 0.0
            for visit in range(args.visits):
                rng = random.Random(args.seed * 1_000_003 + day * 101 + visit)
                for r in people:
                    candidates = rule(seen[r.user_id], clicked[r.user_id], pool, today, clicks)
                    feed = sorted(candidates, key=lambda a: -truth(r, a))[:10]
                    for place, article in enumerate(feed, start=1):
                        looked, true = place**-EXAMINED, truth(r, article)
                        expected, shown = expected + looked * true, shown + 1
                        if rng.random() < looked:
                            seen[r.user_id].add(article)
                            if rng.random() < true:
                                clicks[article] += 1
                                clicked[r.user_id].append(article)
            rates.append(expected / shown)
        print(f"| {name} | " + " | ".join(f"{x:.4f}" for x in rates) + f" | {np.mean(rates):.4f} |", flush=True)


if __name__ == "__main__":
    main()
