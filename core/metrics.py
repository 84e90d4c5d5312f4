"""Offline ranking metrics, as in the MIND benchmark: computed per impression, then averaged (×100 in reports).

Pure functions over one impression's labels (1 clicked, 0 not) and scores (higher = better). Ties in the
ranking keep input order, so results are deterministic.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence

import numpy as np


def ranking(scores: Sequence[float]) -> np.ndarray:
    """Candidate indices, best first; ties keep input order."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")


def ranks(scores: Sequence[float]) -> list[int]:
    """Each candidate's rank (1 = top), in input order: the MIND leaderboard's prediction format."""
    out = np.empty(len(scores), dtype=int)
    out[ranking(scores)] = np.arange(1, len(scores) + 1)
    return out.tolist()


def auc(labels: Sequence[int], scores: Sequence[float]) -> float | None:
    """Probability that a clicked item outscores a non-clicked one (ties count half); None without both."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    positives, negatives = s[y], s[~y]
    if len(positives) == 0 or len(negatives) == 0:
        return None
    greater = (positives[:, None] > negatives[None, :]).sum()
    ties = (positives[:, None] == negatives[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(positives) * len(negatives)))


def mrr(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Mean reciprocal rank of the clicked items (MIND's definition)."""
    y = np.asarray(labels, dtype=np.float64)[ranking(scores)]
    return float((y / np.arange(1, len(y) + 1)).sum() / max(y.sum(), 1.0))


def dcg(labels: Sequence[int], scores: Sequence[float], k: int) -> float:
    y = np.asarray(labels, dtype=np.float64)[ranking(scores)][:k]
    return float(((2**y - 1) / np.log2(np.arange(len(y)) + 2)).sum())


def ndcg(labels: Sequence[int], scores: Sequence[float], k: int) -> float:
    ideal = dcg(labels, labels, k)
    return dcg(labels, scores, k) / ideal if ideal > 0 else 0.0


def intra_list_distance(embeddings: np.ndarray) -> float:
    """Mean pairwise cosine distance of a list's items (0 = all the same, higher = more diverse)."""
    e = np.asarray(embeddings, dtype=np.float64)
    if len(e) < 2:
        return 0.0
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    sims = e @ e.T
    n = len(e)
    return float((1.0 - sims)[np.triu_indices(n, 1)].mean())


def standard_error(values: Sequence[float]) -> float:
    v = np.asarray(values, dtype=np.float64)
    return float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0


def fit_logistic(
    features: np.ndarray,
    labels: np.ndarray,
    l2: float = 1e-2,
    iterations: int = 50,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """L2-regularised logistic regression by Newton's method, each row's loss times its weight (default 1).
    Returns [w_1..w_d, bias]."""
    x = np.hstack([np.asarray(features, dtype=np.float64), np.ones((len(features), 1))])
    y = np.asarray(labels, dtype=np.float64)
    s = np.ones(len(y)) if weights is None else np.asarray(weights, dtype=np.float64)
    w = np.zeros(x.shape[1])
    penalty = np.full(x.shape[1], l2)
    penalty[-1] = 0.0  # the bias is not shrunk
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(x @ w)))
        gradient = x.T @ (s * (p - y)) + penalty * w
        hessian = (x * (s * p * (1 - p))[:, None]).T @ x + np.diag(penalty)
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w


def in_validation(group: str, share: float, seed: int = 0) -> bool:
    """A deterministic split by group: the same user (or impression) always lands on the same side."""
    digest = int(hashlib.sha256(f"{seed}:{group}".encode()).hexdigest(), 16)
    return (digest % 10_000) / 10_000 < share


def by_place(placed: Sequence) -> list[float]:
    """Scores that rank candidates as a placed ranking does (`scoring.Placed`): its place, reversed."""
    scores = [0.0] * len(placed)
    for position, p in enumerate(placed):
        scores[p.index] = float(len(placed) - position)
    return scores


# -- exposure: whom the feed shows, measured over many feeds -------------------------------------------------------
def gini(values: Sequence[float]) -> float:
    """Gini coefficient of non-negative amounts: 0 when all are equal, approaching 1 when one holds them all."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    n = len(x)
    if n == 0 or x.sum() <= 0:
        return 0.0
    return float((2 * np.arange(1, n + 1) - n - 1) @ x / (n * x.sum()))


def capped_weights(groups: Sequence[str], share: float) -> list[float]:
    """A weight per row such that no group's rows together weigh more than `share` of all: each group's total is
    min(its rows, C), C the largest cap that allows (water-filling), spread evenly over its rows. Groups under the
    cap keep weight 1 a row. Where even equal groups would exceed the share (fewer than 1/share groups), every
    group weighs the same. What a fit uses so that one reader (or one client) with many rows cannot steer it."""
    sizes = Counter(groups)
    if not sizes:
        return []
    ordered = sorted(sizes.values())
    cap = float(ordered[0])  # all equal: where fewer than 1/share groups leave nothing better
    if share * len(ordered) > 1:
        for k in range(len(ordered)):  # cap the k largest at C, where C = share × (the rest + k C)
            rest = sum(ordered[: len(ordered) - k])
            c = share * rest / (1 - share * k)
            if ordered[len(ordered) - k - 1] <= c:  # the largest uncapped one is within the cap too
                cap = max(c, float(ordered[-1])) if k == 0 else c
                break
    return [min(sizes[g], cap) / sizes[g] for g in groups]


def mean_auc_by_group(rows: Sequence[tuple[str, Sequence[int], Sequence[float]]]) -> tuple[float, float, int]:
    """Rows of (group, labels, scores): the mean AUC ×100 over the groups (each group's rows with a click and a
    non-click averaged first, so a reader with a hundred feeds counts as one), its standard error, and the rows it
    rests on."""
    by_group = _aucs_by_group(rows)
    values = [float(np.mean(v)) for v in by_group.values()]
    if not values:
        return 0.0, 0.0, 0
    return 100 * float(np.mean(values)), 100 * standard_error(values), sum(map(len, by_group.values()))


def _aucs_by_group(rows: Sequence[tuple[str, Sequence[int], Sequence[float]]]) -> dict[str, list[float]]:
    by_group: dict[str, list[float]] = {}
    for group, labels, scores in rows:
        if (a := auc(labels, scores)) is not None:
            by_group.setdefault(group, []).append(a)
    return by_group


def paired_auc_by_group(
    new: Sequence[tuple[str, Sequence[int], Sequence[float]]],
    current: Sequence[tuple[str, Sequence[int], Sequence[float]]],
) -> tuple[float, float, int]:
    """Two rankings of the same rows, compared group by group (reader by reader): the mean of each group's AUC
    difference ×100 (new − current), its standard error, and the groups. Pairing removes what makes one reader
    easier to rank than another, so the difference is known far better than either mean."""
    a, b = _aucs_by_group(new), _aucs_by_group(current)
    differences = [float(np.mean(a[g]) - np.mean(b[g])) for g in a if g in b]
    if not differences:
        return 0.0, 0.0, 0
    return 100 * float(np.mean(differences)), 100 * standard_error(differences), len(differences)


def not_worse(difference: float, se: float, groups: int, tolerance: float, confidence: float = 0.95) -> bool:
    """Whether a paired difference (paired_auc_by_group) is at least 0 and, at this one-sided confidence (Student's
    t over the groups), no worse than -tolerance. Two groups at least: one says nothing of the spread."""
    if groups < 2 or difference < 0:
        return False
    from scipy.stats import t

    return difference - float(t.ppf(confidence, groups - 1)) * se >= -tolerance
