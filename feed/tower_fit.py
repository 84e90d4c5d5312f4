"""The LLM's match, learned from a platform's own readers: `newsrank tower fit`.

The shipped tower (llm/tower.py) learned from MIND's readers. A platform's readers click what they click: each
ranking a reader was shown and the clicks that followed (feed.learned_ranker.shown_since) is an impression to train
heads on, over the readings the article store keeps. A new tower is judged like a ranker: on a held-out share of
readers, by the match alone (reader by reader), against the tower serving now; what passes (learned_ranker.Decision) is
published as the active version of a named tower (NAME/vN.safetensors beside the rankers), which `NEWSRANK_TOWER=NAME`
serves. No reader weighs more than `reader_share` of the training and no client more than `key_share`, so that one
key's readers cannot teach the match what they fake.

Retrain the ranker after a new tower (`newsrank ranker fit`): the rankings it learns from carry the match of the
tower that served them.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from config.settings import PACKAGED_LLM
from core import metrics
from core.errors import InvalidInput
from core.stores import ArticleStore, FeedbackStore
from core.versions import Versions
from feed.learned_ranker import Decision, decide, shown_since
from llm.tower import Impression, Tower, train


class TowerRegistry(Versions):
    """Versions of towers trained on the platform's readers: NAME/vN.safetensors and NAME/state.json."""

    kind = "tower"
    suffix = ".safetensors"

    def publish(self, name: str, tower: Tower) -> int:
        return self.publish_with(name, tower.save)

    def load(self, reference: str) -> tuple[str, Tower]:
        key, path = self.path(reference)
        return key, Tower.load(path)


@dataclass(frozen=True)
class Example:
    """One ranking as the heads learn from it, with whose it was: the reader (the validation split, the reader
    share) and the client it was made for (the key share)."""

    reader: str
    owner: str
    impression: Impression


def from_feedback(
    feedback: FeedbackStore, articles: ArticleStore, since: float, history_size: int = 20
) -> list[Example]:
    """Every ranking shown since a time with the readings of its items and of the reader's latest `history_size`
    engaged articles before it. Items without a stored reading (stored before a tower was served), or with one of
    another size, are left out, and a ranking without a read history item, a click or a non-click with them."""
    shown = shown_since(feedback, since)
    wanted = {a for s in shown for a in (*s.before[:history_size], *(i.article_id for i in s.record.items))}
    readings = {a: h.reading for a, h in articles.get(sorted(wanted)).items() if h.reading is not None}
    if readings:  # articles read by an earlier base model have readings of another size: the most common wins
        size = Counter(r.shape for r in readings.values()).most_common(1)[0][0]
        readings = {a: r for a, r in readings.items() if r.shape == size}
    examples = []
    for s in shown:
        history = [readings[a] for a in s.before[:history_size] if a in readings]
        kept = [(readings[i.article_id], label) for i, label in zip(s.record.items, s.labels, strict=True)
                if i.article_id in readings]  # fmt: skip
        if history and 0 < sum(label for _, label in kept) < len(kept):
            candidates, labels = zip(*kept, strict=True)
            examples.append(Example(s.record.user_id, s.record.owner or "",
                                    Impression(np.stack(history), np.stack(candidates), labels)))  # fmt: skip
    return examples


def match_rows(examples: Sequence[Example], tower: Tower | None) -> list[tuple[str, tuple[int, ...], list[float]]]:
    """The match alone, as the gate judges it: (reader, labels, match) per ranking. Without a tower every item is
    neutral (50)."""

    def scores(i: Impression) -> list[float]:
        return tower.match(list(i.history), list(i.candidates)) if tower else [0.5] * len(i.labels)

    return [(e.reader, tuple(e.impression.labels), scores(e.impression)) for e in examples]


def fit_and_gate(
    examples: Sequence[Example],
    current: Tower | None,
    against: str = "the served tower",
    validation_share: float = 0.2,
    seed: int = 0,
    split: Callable[[str, float, int], bool] = metrics.in_validation,
    reader_share: float = 1.0,
    key_share: float = 1.0,
    **options: Any,
) -> tuple[Tower, Decision]:
    """Train heads on the examples outside a seeded validation share of readers (`split`, keyed by a secret in
    the service), each weighted so that no reader and no client weighs more than its share, and compare the new
    tower's match with `current`'s on that share. `options`: llm.tower.train's (heads, epochs, base_model ...)."""
    validation = [e for e in examples if split(e.reader, validation_share, seed)]
    fitted_on = [e for e in examples if not split(e.reader, validation_share, seed)]
    if not fitted_on:
        raise InvalidInput("no rankings with a read history, a click and a non-click to train a tower on")
    readers = metrics.capped_weights([e.reader for e in fitted_on], reader_share)
    clients = metrics.capped_weights([e.owner for e in fitted_on], key_share)
    new = train([e.impression for e in fitted_on], weights=[r * c for r, c in zip(readers, clients, strict=True)],
                seed=seed, **options)  # fmt: skip
    decision = decide(match_rows(validation, new), match_rows(validation, current), against)
    gate = {"new": decision.new, "current": decision.current, "paired": decision.paired, "against": against}
    card = {**new.card, "validation_rankings": len(validation), "reader_share": reader_share, "key_share": key_share,
            "gate": gate}  # fmt: skip
    return replace(new, card=card), decision


@dataclass(frozen=True)
class Refit:
    """What `refit` did: the gate's decision and the version it published (None: not published)."""

    decision: Decision
    version: int | None
    rankings: int


def refit(
    feedback: FeedbackStore,
    articles: ArticleStore,
    registry: TowerRegistry,
    name: str,
    since: float,
    served: Tower | None,
    force: bool = False,
    split: Callable[[str, float, int], bool] = metrics.in_validation,
    reader_share: float = 1.0,
    key_share: float = 1.0,
    **options: Any,
) -> Refit:
    """Train a tower named `name` on the rankings shown since a time, gate it against the active version of that
    name (the `served` tower where it has none), and publish it as the active version when it passes (or
    `force`)."""
    examples = from_feedback(feedback, articles, since)
    options.setdefault("base_model", (served.card.get("base_model") if served else None) or PACKAGED_LLM)
    current, against = served, "the served tower" if served else "no tower"
    with contextlib.suppress(InvalidInput):  # no version under this name yet: the served tower is the bar
        against, current = registry.load(name)
    fitted, decision = fit_and_gate(examples, current, against, split=split, reader_share=reader_share,
                                    key_share=key_share, **options)  # fmt: skip
    version = registry.publish(name, fitted) if decision.passed or force else None
    return Refit(decision, version, len(examples))


def registry_of(adapters_path: Path) -> TowerRegistry:
    return TowerRegistry(adapters_path / "towers")


def is_file_reference(reference: str) -> bool:
    """NEWSRANK_TOWER names a tower file (else a registered tower, or the shipped one)."""
    return reference.endswith(".safetensors") or Path(reference).is_file()
