"""The evaluation gate: a new adapter is published only if it ranks the validation examples better than the
one being served (or the base model, when none is), and, against forgetting, falls no more than a margin below
it on the reference sets earlier versions were judged on (each version keeps a sample of its validation
examples as `reference.jsonl`)."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from adapters.export import Example, write_examples
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


REFERENCE = "reference.jsonl"  # in a version's folder: the sample of validation examples it was judged on


@dataclass(frozen=True)
class Forgetting:
    """The candidate against the served adapter on each earlier version's reference set: (version, new AUC,
    served AUC). It forgets when it falls more than `margin` points below on any of them."""

    checks: tuple[tuple[str, float, float], ...]
    margin: float

    @property
    def passed(self) -> bool:
        return all(new >= served - self.margin for _, new, served in self.checks)

    def summary(self) -> str:
        if not self.checks:
            return "no earlier reference set to check for forgetting"
        said = "; ".join(f"{v}: {new:.2f} vs {served:.2f}" for v, new, served in self.checks)
        verdict = "kept" if self.passed else f"FORGOTTEN (more than {self.margin:g} points below)"
        return f"earlier reference sets, new vs served AUC: {said}: {verdict}"


def forgetting(
    backend: Backend, references: dict[str, Sequence[Example]], new: str, current: str | None, margin: float
) -> Forgetting:
    checks = tuple(
        (version, quality(backend, examples, new).auc, quality(backend, examples, current).auc)
        for version, examples in references.items()
        if examples
    )
    return Forgetting(checks, margin)


def keep_reference(folder: Path, validation: Sequence[Example], size: int, seed: int = 0) -> int:
    """Keep a sample of the examples a version was judged on, whole groups, in its folder (`reference.jsonl`)."""
    groups = sorted({e.group for e in validation})
    random.Random(seed).shuffle(groups)
    chosen, kept = set(), 0
    for group in groups:
        if kept >= size:
            break
        chosen.add(group)
        kept += sum(e.group == group for e in validation)
    return write_examples(folder / REFERENCE, [e for e in validation if e.group in chosen])
