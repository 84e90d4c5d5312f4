"""How much of the best possible feed the product's own candidates hold, for simulated readers as strangers.

    .venv/bin/python benchmarks/candidate_bound.py [--days 7] [--readers 60] [--visits 2] [--seed 0]

No service: the readers, articles and click model of benchmarks/simulate.py, with the candidate rule of
`Recommender.candidates` mimicked (24 of 30 nearest to the mean embedding of the reader's clicks and 6 of the day's
articles; a reader without a click: the 15 most clicked and 15 of the day's). Each feed is the 10 candidates the
reader's true relevance ranks first, so its expected click-through rate is the most any ranking of those
candidates could give (an adapter, a tower, a ranker: what the learning loop changes). Beside it, the same with
every published article as a candidate (the "best possible" of simulate.py) and with 60 candidates. Readers click
on what they are shown by the simulation's model, so what they click depends on the rule, as in the service.

Then the product's 30 candidates ranked by blends of what a service knows of a stranger (similarity to the mean of
their clicks, their share of clicks in the article's category, popularity log-scaled among the candidates, the
article's click-through rate: clicks over the readers who looked at it; over those and the others shown it, each
of these weighed by 1/k of their place k, as the service counts them (it hears of a look from an impression event or
a click); or over every reader shown it), placed with the product's greedy diversity (0.1): the hand-set weights
(freshness and the zero-shot LLM's small weight left out), and other weights a learned ranker could find. How far
reweighting alone could take the learning loop.
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


# blends of what a service knows of a stranger: (similarity, share of clicks, popularity, click-through rate), and
# the click-through rate's denominator: readers who looked; those and the others shown, each weighed by 1/k of their
# place (the service's count); readers shown
BLENDS = {
    "the hand-set weights (similarity 0.336, topic 0.2, popularity 0.15)": ((0.336, 0.2, 0.15, 0.0), "looked"),
    "+ the articles' click-through rate 0.2": ((0.336, 0.2, 0.15, 0.2), "looked"),
    "+ click-through rate 0.2, as the service counts (passed over: 1/k)": ((0.336, 0.2, 0.15, 0.2), "examined"),
    "+ click-through rate 0.2, readers shown": ((0.336, 0.2, 0.15, 0.2), "shown"),
    "+ click-through rate 0.4, popularity 0.4": ((0.336, 0.2, 0.4, 0.4), "looked"),
    "popularity 0.4": ((0.336, 0.2, 0.4, 0.0), "looked"),
    "similarity 0.6": ((0.6, 0.2, 0.15, 0.0), "looked"),
}


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

    def run(rule: Rule, rank: Callable) -> list[float]:
        """Each day's expected click-through rate, readers clicking on what `rank` puts first of `rule`'s."""
        clicks = Counter()
        seen_by = {"looked": Counter(), "examined": Counter(), "shown": Counter()}  # the rate's denominators
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
                    for place, article in enumerate(rank(r, candidates, clicked[r.user_id], clicks, seen_by), start=1):
                        looked, true = place**-EXAMINED, r.relevance(vectors[article], category[article])
                        expected, shown = expected + looked * true, shown + 1
                        seen_by["shown"][article] += 1
                        if rng.random() >= looked:  # passed over: the service counts them by their place
                            seen_by["examined"][article] += 1 / place
                        else:  # looked: the simulation sends the service an impression (or a click)
                            seen[r.user_id].add(article)
                            seen_by["looked"][article] += 1
                            seen_by["examined"][article] += 1
                            if rng.random() < true:
                                clicks[article] += 1
                                clicked[r.user_id].append(article)
            rates.append(expected / shown)
        return rates

    def by_truth(reader, candidates, *_) -> list[str]:
        return sorted(candidates, key=lambda a: -reader.relevance(vectors[a], category[a]))[:10]

    def blend(weights: tuple[float, float, float, float], denominator: str) -> Callable:
        """The product's blend of the signals a service has for a stranger, greedy diversity 0.1 as it places."""
        w_sim, w_topic, w_pop, w_ctr = weights

        def rank(reader, candidates: list[str], clicked: list[str], clicks: Counter, seen_by: dict) -> list[str]:
            looks = seen_by[denominator]
            logs = np.log1p([clicks[a] for a in candidates])
            popular = logs / logs.max() if logs.max() > 0 else logs
            rate = np.array([(clicks[a] + 1) / (looks[a] + 10) for a in candidates])
            similar, topic = np.zeros(len(candidates)), np.zeros(len(candidates))
            if clicked:
                query = np.mean([unit[a] for a in clicked], axis=0)
                similar = np.clip([float(unit[a] @ query) / np.linalg.norm(query) for a in candidates], 0, 1)
                shares = Counter(category[a] for a in clicked)
                topic = np.array([shares[category[a]] / len(clicked) for a in candidates])
            score = w_sim * similar + w_topic * topic + w_pop * popular + w_ctr * rate / rate.max()
            feed: list[str] = []
            left = list(range(len(candidates)))
            while left and len(feed) < 10:

                def gain(i: int) -> float:
                    nearest = max((float(unit[candidates[i]] @ unit[f]) for f in feed), default=0.0)
                    return score[i] + 0.1 * (1 - nearest)

                best = max(left, key=gain)
                left.remove(best)
                feed.append(candidates[best])
            return feed

        return rank

    days = " | ".join(f"day {d}" for d in range(1, args.days + 1))
    print(f"| candidates, ranked by the true relevance | {days} | all |")
    print("|---|" + "---:|" * (args.days + 1))
    for name, rule in (("every published article", every_article), ("the product's 30", nearest_and_fresh(30, unit)),
                       ("60 by the same rule", nearest_and_fresh(60, unit))):  # fmt: skip
        rates = run(rule, by_truth)
        print(f"| {name} | " + " | ".join(f"{x:.4f}" for x in rates) + f" | {np.mean(rates):.4f} |", flush=True)
    print(f"\n| the product's 30, ranked by a blend of what the service knows | {days} | all |")
    print("|---|" + "---:|" * (args.days + 1))
    for name, (weights, denominator) in BLENDS.items():
        rates = run(nearest_and_fresh(30, unit), blend(weights, denominator))
        print(f"| {name} | " + " | ".join(f"{x:.4f}" for x in rates) + f" | {np.mean(rates):.4f} |", flush=True)


if __name__ == "__main__":
    main()
