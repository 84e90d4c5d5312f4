"""The evaluation gate: a new adapter is published only if it ranks the validation examples better than the
one being served (or the base model, when none is)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from adapters.export import Example
from core import metrics
from core.llm import Backend, ScoreRequest


@dataclass(frozen=True)
class Quality:
    auc: float  # mean per-group AUC ×100 (groups with both labels)
    ndcg10: float  # mean per-group nDCG@10 ×100 (groups with a positive)
    groups: int


@dataclass(frozen=True)
class Decision:
    new: Quality
    current: Quality
    passed: bool

    def summary(self) -> str:
        verdict = "better: publish" if self.passed else "not better: keep the served one"
        return (
            f"validation ({self.new.groups} groups): new AUC {self.new.auc:.2f} nDCG@10 {self.new.ndcg10:.2f} vs "
            f"served AUC {self.current.auc:.2f} nDCG@10 {self.current.ndcg10:.2f}: {verdict}"
        )


def quality(backend: Backend, examples: Sequence[Example], adapter: str | None) -> Quality:
    scores = backend.score([ScoreRequest(e.prefix, e.suffix, adapter) for e in examples])
    by_group: dict[str, tuple[list[int], list[float]]] = defaultdict(lambda: ([], []))
    for e, s in zip(examples, scores, strict=True):
        by_group[e.group][0].append(e.label)
        by_group[e.group][1].append(s)
    aucs = [a for labels, s in by_group.values() if (a := metrics.auc(labels, s)) is not None]
    ndcgs = [metrics.ndcg(labels, s, 10) for labels, s in by_group.values() if any(labels)]
    return Quality(
        auc=100 * float(np.mean(aucs)) if aucs else 0.0,
        ndcg10=100 * float(np.mean(ndcgs)) if ndcgs else 0.0,
        groups=len(aucs),
    )


def decide(new: Quality, current: Quality) -> Decision:
    """Better means a higher AUC without a lower nDCG@10."""
    return Decision(new, current, new.auc > current.auc and new.ndcg10 >= current.ndcg10)


def gate(backend: Backend, validation: Sequence[Example], new: str, current: str | None) -> Decision:
    return decide(quality(backend, validation, new), quality(backend, validation, current))
