"""How often the LLM's rewrite of a template explanation earns its place: it is kept only when it names every fact
the template names (each interest, and the history title); this counts how often that is so.

    .venv/bin/python benchmarks/explanation_rewrites.py [--readers 12] [--seed 0]

A temporary data dir with the demo corpus and readers, the real packaged LLM. Besides the demo readers, each
extra reader reads three demo articles of one category. For every reader: a feed with explanations (the template
at once), then the background scorer's rewrite of it. Prints, over the top items that had facts to cite, how
many rewrites were kept, how many named at least one fact but dropped another (less specific than the template:
not kept), and how many named none, with examples of each.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from collections import Counter, defaultdict
from importlib.resources import files
from pathlib import Path

from config.settings import Settings
from feed import explain
from feed.background_scorer import Scorer
from feed.recommender import FeedRequest
from llm import prompts
from llm.models import offline
from serve import demo
from serve.service import DEMO_USERS, Newsrank


class Keeping:
    """Passes generation through, keeping the texts, so the verdict on each can be shown."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.texts: list[str] = []

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def generate(self, requests):
        out = self.inner.generate(requests)
        self.texts += [g.text for g in out]
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readers", type=int, default=12, help="extra readers besides the demo ones")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    offline()
    rng = random.Random(args.seed)
    rows = [json.loads(r) for r in (files("serve") / "demo" / "articles.jsonl").read_text().splitlines() if r]
    by_category = defaultdict(list)
    for row in rows:
        by_category[row.get("category", "")].append(row["id"])
    with tempfile.TemporaryDirectory() as tmp:
        service = Newsrank.from_settings(Settings(data_dir=Path(tmp), scorer_threads=0))
        demo.seed(service.articles, service.feedback, service.clock(), show_progress=False)
        readers = list(DEMO_USERS[:3])
        for n in range(args.readers):
            category = rng.choice(sorted(by_category))
            reader = f"reader-{n}-{category}"
            picks = rng.sample(by_category[category], 3)
            service.add_events([{"user_id": reader, "article_id": a, "type": "click"} for a in picks])
            readers.append(reader)
        backend = Keeping(service.backend)
        service.recommender.backend = backend
        scorer = Scorer(service.recommender, "bench")
        verdicts: Counter[str] = Counter()
        examples: dict[str, list[str]] = defaultdict(list)
        for reader in readers:
            feed = service.recommend(FeedRequest(reader, k=10))
            top = [i.record for i in feed.items[: service.settings.explain_top] if i.record.grounded_in]
            backend.texts.clear()
            scorer.rewrite(reader)
            stored = {i.position: i for i in service.feedback.ranking(feed.ranking_id).items}
            for record, text in zip(top, backend.texts, strict=False):
                written = f"{prompts.render(explain.EXPLAIN_ANSWER)} {text}"
                grounding = explain.Grounding.from_facts(record.grounded_in)
                cleaned = explain.clean(written)
                if stored[record.position].explanation_source == "llm":
                    verdict = "kept: names every fact"
                elif any(explain.cites(cleaned, explain.Grounding.from_facts((f,))) for f in record.grounded_in):
                    verdict = "not kept: names a fact, drops another"
                else:
                    verdict = "not kept: names no fact (or not a sentence to the reader)"
                verdicts[verdict] += 1
                if len(examples[verdict]) < 3:
                    examples[verdict].append(f"{'; '.join(grounding.facts)} → {cleaned!r}")
        total = sum(verdicts.values())
        print(f"{len(readers)} readers, {total} top items with facts to cite, {service.settings.llm}")
        for verdict, n in verdicts.most_common():
            print(f"- {verdict}: {n} ({n / total:.0%})")
            for example in examples[verdict]:
                print(f"    {example}")
        service.feedback.close()


if __name__ == "__main__":
    main()
