"""A learned ranker: how much to trust each signal, fitted on clicks instead of set by hand.

Logistic regression of a click on a candidate's signals (core.records.SIGNALS: the LLM's relevance, similarity to
the profile and to the closest single history item, category and subcategory shares, popularity), with the
reader's history size interacting with the signals it makes more or less reliable. For one reader the history
size is fixed, so the fitted model is a linear blend with that reader's own weights: `weights()` turns a reader
into blend weights, and the feed, its record, `why` and chat work with them exactly as with the hand-set ones.
Freshness (MIND has no times) and the diversity term stay settings on top.

Every input is a share, a cosine, a probability or a bounded log of the history size, so a fit on one platform's
traffic carries to another of a different size (docs/BENCHMARKS.md checks a fit across MIND samples).

A ranker is a small JSON file: two fits (with the LLM's relevance, and without it for a scorer the ranker was not
fitted with), the scorer its relevance came from, and what it was fitted on. `newsrank ranker` fits, gates,
versions and activates them.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from core import metrics
from core.errors import InvalidInput
from core.records import ENGAGEMENT, SIGNALS, RankingRecord, Signals
from core.stores import FeedbackStore
from core.versions import Versions
from feed import position
from feed.position import Propensities

FORMAT = "newsrank-ranker/1"
HISTORY_SCALE = math.log1p(50)
FEATURES = tuple(spec.name for spec in SIGNALS if spec.fitted)
# the signals a long history makes more telling (or a short one less)
INTERACTIONS = ("relevance", "similarity", "closest")


def unversioned(scorer: str) -> str:
    """A scorer key with its adapter's version left out: model|clicks|prompt|strategy for model|clicks@3|..."""
    model, _, rest = scorer.partition("|")
    adapter, _, rest = rest.partition("|")
    return f"{model}|{adapter.partition('@')[0]}|{rest}"


def history_feature(items: int) -> float:
    """A reader's history size as a number near [0, 1]: log(1 + items) / log(1 + 50)."""
    return math.log1p(max(items, 0)) / HISTORY_SCALE


def columns(names: Sequence[str], interactions: bool = True) -> list[str]:
    return [*names, *(f"{name}*history" for name in INTERACTIONS if name in names and interactions)]


def matrix(
    signals: Sequence[Signals], history: Sequence[int], names: Sequence[str], interactions: bool = True
) -> np.ndarray:
    wanted = columns(names, interactions)
    rows = []
    for s, items in zip(signals, history, strict=True):
        h = history_feature(items)
        rows.append([getattr(s, c.split("*")[0]) * (h if "*" in c else 1.0) for c in wanted])
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), len(wanted))


@dataclass(frozen=True)
class Fit:
    """One logistic regression on standardised columns. `spread`: the range of its logits over the middle 90 % of
    the candidates it was fitted on; `hand_spread`: the same range of the hand-set blend's scores (the declared
    default weights) on those candidates. The reader's weights map the one onto the other, so that diversity
    and freshness keep the say next to the ranker that they have next to the hand-set weights."""

    columns: list[str]
    mean: list[float]
    scale: list[float]
    coef: list[float]
    intercept: float
    spread: float
    hand_spread: float

    def logits(self, x: np.ndarray) -> np.ndarray:
        return ((x - np.asarray(self.mean)) / np.asarray(self.scale)) @ np.asarray(self.coef) + self.intercept

    def per_signal(self, history: int) -> dict[str, float]:
        """The logit's slope in each signal for a reader with this history size."""
        h = history_feature(history)
        slopes: dict[str, float] = {}
        for column, coef, scale in zip(self.columns, self.coef, self.scale, strict=True):
            name, _, inter = column.partition("*")
            slopes[name] = slopes.get(name, 0.0) + coef / scale * (h if inter else 1.0)
        return slopes


def fit_columns(signals: Sequence[Signals], history: Sequence[int], labels: Sequence[int], names: Sequence[str],
                l2: float = 1.0, interactions: bool = True, weights: Sequence[float] | None = None) -> Fit:  # fmt: skip
    """`weights`: each candidate's weight in the fit (feed.position.ips_weights), None for all 1."""
    x = matrix(signals, history, names, interactions)
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale < 1e-9] = 1.0
    w = metrics.fit_logistic((x - mean) / scale, np.asarray(labels), l2=l2, weights=weights)
    fit = Fit(columns(names, interactions), mean.tolist(), scale.tolist(), w[:-1].tolist(), float(w[-1]), 1.0, 1.0)
    hand = np.array([sum(spec.weight * getattr(s, spec.name) for spec in SIGNALS if spec.fitted) for s in signals])
    return replace(fit, spread=middle_range(fit.logits(x)), hand_spread=middle_range(hand))


def middle_range(values: np.ndarray) -> float:
    """The range of the middle 90 % of the values (never 0)."""
    low, high = np.percentile(values, [5, 95])
    return float(max(high - low, 1e-6))


@dataclass(frozen=True)
class Ranker:
    with_llm: Fit | None  # None: fitted where the LLM had scored nothing
    without_llm: Fit
    scorer: str | None  # the LLM scorer (model|adapter|prompt|strategy) whose relevance with_llm was fitted on
    fitted_on: dict = field(default_factory=dict)  # what it learned from, and its quality there
    format: str = FORMAT

    def fit_for(self, scorer: str | None) -> Fit:
        """With the LLM's relevance only for the scorer it was fitted with: another model's P(Yes) means else. A
        later version of the same adapter (clicks@3 for a fit on clicks@2, trained on from it) counts as the same:
        the learning loop refits after it promotes, not before it may test."""
        same = scorer is not None and self.scorer is not None and unversioned(scorer) == unversioned(self.scorer)
        return self.with_llm if self.with_llm is not None and same else self.without_llm

    def weights(self, history: int, scorer: str | None, settings: Mapping[str, float]) -> dict[str, float]:
        """The blend weights for one reader: the fit's slopes, scaled so that its scores spread as the hand-set
        blend's did on the candidates it was fitted on (in proportion to the fitted signals' total weight in
        `settings`); freshness and diversity as `settings` set them."""
        fit = self.fit_for(scorer)
        budget = sum(settings[name] for name in FEATURES) / sum(s.weight for s in SIGNALS if s.fitted)
        scale = budget * fit.hand_spread / fit.spread
        slopes = fit.per_signal(history)
        return {**settings, **{name: round(scale * slopes.get(name, 0.0), 6) for name in FEATURES}}

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Ranker:
        try:
            raw = json.loads(Path(path).read_text())
            if raw.get("format") != FORMAT:
                raise ValueError(f"format {raw.get('format')!r}, expected {FORMAT!r}")
            with_llm = Fit(**raw["with_llm"]) if raw["with_llm"] else None
            ranker = cls(**{**raw, "with_llm": with_llm, "without_llm": Fit(**raw["without_llm"])})
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise InvalidInput(f"not a ranker file: {path} ({exc})") from None
        for fit in (ranker.with_llm, ranker.without_llm):
            if fit is not None and not set(fit.columns) <= set(columns(FEATURES)):
                raise InvalidInput(f"ranker {path} has columns {fit.columns}; this version reads {columns(FEATURES)}")
        return ranker


def fit(
    signals: Sequence[Signals],
    history: Sequence[int],
    labels: Sequence[int],
    scored: Sequence[bool],
    scorer: str | None,
    l2: float = 1.0,
    weights: Sequence[float] | None = None,
    **fitted_on: object,
) -> Ranker:
    """Both fits on the same clicks: with the LLM's relevance (candidates it scored) and without it (all).
    `weights`: each candidate's weight in both fits, None for all 1."""
    if not any(labels) or all(labels):
        raise InvalidInput("fitting a ranker needs both clicked and unclicked candidates")
    index = [i for i, s in enumerate(scored) if s]
    chosen = [labels[i] for i in index]
    with_llm = None
    if any(chosen) and not all(chosen):
        with_llm = fit_columns([signals[i] for i in index], [history[i] for i in index], chosen, FEATURES, l2,
                               weights=None if weights is None else [weights[i] for i in index])  # fmt: skip
    base = [name for name in FEATURES if name != "relevance"]
    without_llm = fit_columns(signals, history, labels, base, l2, weights=weights)
    return Ranker(with_llm, without_llm, scorer, {"candidates": len(labels), "clicks": int(sum(labels)), **fitted_on})


class RankerRegistry(Versions):
    """Versions of learned rankers in one folder, which every instance shares (beside the adapters):
    NAME/vN.json, and NAME/state.json with the active version and the ones active before it (for rollback)."""

    kind = "ranker"

    def publish(self, name: str, ranker: Ranker) -> int:
        """Store a new version and make it active; returns its number."""
        return self.publish_with(name, lambda path: path.write_text(json.dumps(asdict(ranker), indent=1)))


# -- fitting from logged impressions, gated like adapters ----------------------------------------------------------
@dataclass(frozen=True)
class Impression:
    """What one reader was shown at once (a ranking, or a MIND impression) and what they clicked."""

    group: str  # the split key: the reader (an impression where readers are unknown)
    signals: tuple[Signals, ...]
    labels: tuple[int, ...]
    history: int  # the reader's history items then
    scored: bool  # the relevance came from the scorer being fitted
    weights: tuple[float, ...] | None = None  # each candidate's weight in a fit (feed.position.ips_weights)
    owner: str = ""  # the client the ranking was made for: no client weighs more than a share of a fit


def ranked_by(impression: Impression, weights: Mapping[str, float]) -> list[float]:
    """The blend's score of each candidate before the diversity term (which needs the embeddings)."""
    return [sum(weights[name] * getattr(s, name) for name in FEATURES) for s in impression.signals]


def mean_auc(impressions: Sequence[Impression], weights_of) -> tuple[float, float, int]:
    """Mean AUC ×100 over the readers (each reader's impressions with a click and a non-click averaged first, so
    a reader with a hundred feeds counts as one), its standard error, and the impressions it rests on."""
    return metrics.mean_auc_by_group(ranked_rows(impressions, weights_of))


def ranked_rows(impressions: Sequence[Impression], weights_of) -> list[tuple[str, tuple[int, ...], list[float]]]:
    return [(i.group, i.labels, ranked_by(i, weights_of(i))) for i in impressions]


GATE_TOLERANCE = 1.0  # AUC points: a refit is published only where, at 95 % confidence, it is no worse than this


@dataclass(frozen=True)
class Decision:
    """A refit against the model serving, on held-out readers: each one's mean AUC (×100, its standard error, the
    rankings), and `paired` their difference reader by reader (metrics.paired_auc_by_group). It passes when the
    difference is at least 0 and, at 95 % confidence, no worse than `tolerance`: a refit published to every reader
    with no A/B test must show that it is not worse, which a handful of held-out readers cannot."""

    new: tuple[float, float, int]
    current: tuple[float, float, int]
    against: str
    paired: tuple[float, float, int]
    tolerance: float = GATE_TOLERANCE

    @property
    def passed(self) -> bool:
        return self.new[2] > 0 and metrics.not_worse(*self.paired, tolerance=self.tolerance)

    def evidence(self) -> dict[str, object]:
        """The decision as flat numbers, for the learning loop's history."""
        return {"gate": "passed" if self.passed else "failed", "auc": round(self.new[0], 2),
                "auc_se": round(self.new[1], 2), "against": self.against, "against_auc": round(self.current[0], 2),
                "held_out_rankings": self.new[2], "difference": round(self.paired[0], 2),
                "difference_se": round(self.paired[1], 2), "held_out_readers": self.paired[2]}  # fmt: skip

    def summary(self) -> str:
        (a, se, n), (b, se_b, _), (d, se_d, readers) = self.new, self.current, self.paired
        if n == 0:
            return "gate FAILED: no held-out ranking has both a click and a non-click to judge it on"
        verdict = "passed" if self.passed else "FAILED"
        return (f"gate {verdict}: held-out AUC {a:.2f} ± {se:.2f} against {b:.2f} ± {se_b:.2f} ({self.against}), "
                f"on {n} impressions; reader by reader {d:+.2f} ± {se_d:.2f} over {readers} readers (it passes at "
                f"≥ 0 and, at 95 % confidence, no worse than -{self.tolerance:g})")  # fmt: skip


def decide(
    new: Sequence[tuple[str, Sequence[int], Sequence[float]]],
    current: Sequence[tuple[str, Sequence[int], Sequence[float]]],
    against: str,
    tolerance: float = GATE_TOLERANCE,
) -> Decision:
    """The gate's decision on two rankings of the same held-out rows (group, labels, scores)."""
    return Decision(metrics.mean_auc_by_group(new), metrics.mean_auc_by_group(current), against,
                    metrics.paired_auc_by_group(new, current), tolerance)  # fmt: skip


def fit_impressions(
    impressions: Sequence[Impression],
    scorer: str | None,
    reader_share: float = 1.0,
    key_share: float = 1.0,
    **fitted_on: object,
) -> Ranker:
    """`fit` on every candidate of these impressions, weighted by their `weights` where any has them (1 if not),
    and so that no reader (`group`) weighs more than `reader_share` of the fit and no client (`owner`) more than
    `key_share` (core.metrics.capped_weights): a few readers with many feeds cannot steer it."""
    readers = metrics.capped_weights([i.group for i in impressions], reader_share)
    clients = metrics.capped_weights([i.owner for i in impressions], key_share)
    rows = [
        (s, i.history, label, i.scored, weight * share)
        for i, share in zip(impressions, (r * c for r, c in zip(readers, clients, strict=True)), strict=True)
        for s, label, weight in zip(i.signals, i.labels, i.weights or [1.0] * len(i.signals), strict=True)
    ]
    if not rows:
        raise InvalidInput("no impressions to fit a ranker on")
    signals, history, labels, scored, weights = map(list, zip(*rows, strict=True))
    weighted = any(i.weights is not None for i in impressions) or any(w != 1.0 for w in weights)
    return fit(signals, history, labels, scored, scorer, weights=weights if weighted else None,
               impressions=len(impressions), **fitted_on)  # fmt: skip


def fit_and_gate(
    impressions: Sequence[Impression],
    scorer: str | None,
    hand_set: Mapping[str, float],
    current: Ranker | None,
    validation_share: float = 0.2,
    seed: int = 0,
    split: Callable[[str, float, int], bool] = metrics.in_validation,
    reader_share: float = 1.0,
    key_share: float = 1.0,
    **fitted_on: object,
) -> tuple[Ranker, Decision]:
    """Fit on the impressions outside a seeded validation share (by reader: `split`, keyed by a secret in the
    service, so that no client can choose which side its readers fall on), and compare the product's ranking
    with the new ranker against the one serving now (the hand-set weights if none) on that share, reader by
    reader."""
    validation = [i for i in impressions if split(i.group, validation_share, seed)]
    train = [i for i in impressions if not split(i.group, validation_share, seed)]
    new = fit_impressions(train, scorer, reader_share, key_share, validation_impressions=len(validation),
                          **fitted_on)  # fmt: skip

    def weights_by(ranker: Ranker | None):
        return lambda i: ranker.weights(i.history, scorer if i.scored else None, hand_set) if ranker else hand_set

    decision = decide(ranked_rows(validation, weights_by(new)), ranked_rows(validation, weights_by(current)),
                      "the active ranker" if current else "the hand-set weights")  # fmt: skip
    return replace(new, fitted_on={**new.fitted_on, "gate": asdict(decision)}), decision


CLICK_WINDOW_SECONDS = 24 * 3600.0  # a click this long after a feed was shown counts for it


@dataclass(frozen=True)
class Shown:
    """A ranking a reader was shown, which of its items they engaged with within a day, and the articles they had
    engaged with before it (latest first)."""

    record: RankingRecord
    labels: tuple[int, ...]
    before: tuple[str, ...]


def shown_since(feedback: FeedbackStore, since: float) -> list[Shown]:
    """Every feed ranking shown since a time (not a search's, not a cold start's), labelled by the clicks (likes,
    shares, comments) that followed within CLICK_WINDOW_SECONDS."""
    found = []
    for user_id in feedback.user_ids(since):
        events = feedback.events(user_id)
        engaged = sorted((e for e in events if e.type in ENGAGEMENT), key=lambda e: -e.ts)
        for record in feedback.rankings_for(user_id):
            if (
                record.created_at < since
                or record.cold_start
                or not record.items
                or record.strategy.startswith("search")
            ):
                continue
            end = record.created_at + CLICK_WINDOW_SECONDS
            clicked = {e.article_id for e in engaged if record.created_at <= e.ts <= end}
            before = tuple(dict.fromkeys(e.article_id for e in engaged if e.ts < record.created_at))
            found.append(Shown(record, tuple(int(i.article_id in clicked) for i in record.items), before))
    return found


def from_feedback(
    feedback: FeedbackStore, since: float, propensities: Propensities | None = None
) -> tuple[list[Impression], str | None]:
    """A platform's own impressions: every ranking shown to a reader since a time (`shown_since`). The scorer
    fitted for is the one that scored most of them; the others count as rankings without the LLM's relevance.
    With `propensities`, each click weighs the inverse propensity of the place it was shown at (feed.position)."""
    found = shown_since(feedback, since)
    scorers = Counter(record_scorer(s.record) for s in found)
    scorer = scorers.most_common(1)[0][0] if scorers else None
    known = {f.name for f in fields(Signals)}
    impressions = [
        Impression(
            r.user_id,  # the validation split is by reader: none of a held-out reader's rankings is fitted on
            tuple(Signals(**{k: v for k, v in i.signals.items() if k in known}) for i in r.items),
            labels,
            len(before),
            scored=record_scorer(r) == scorer and all(i.relevance_source in ("llm", "llm-stale") for i in r.items),
            weights=None
            if propensities is None
            else tuple(position.ips_weights([i.position for i in r.items], labels, propensities)),
            owner=r.owner or "",
        )
        for r, labels, before in ((s.record, s.labels, s.before) for s in found)
    ]
    return impressions, scorer


def record_scorer(record: RankingRecord) -> str:
    """The scorer of a ranking's relevance, named as Recommender.scorer names it."""
    strategy = record.strategy.split("+")[0]
    return f"{record.model}|{record.adapter or '-'}|{record.prompt_version}|{strategy}"


@dataclass(frozen=True)
class Refit:
    """What `refit` did: the gate's decision and the version it published (None: not published)."""

    decision: Decision
    version: int | None
    rankings: int
    scored: int
    scorer: str | None


def refit(
    feedback: FeedbackStore,
    registry: RankerRegistry,
    name: str,
    since: float,
    hand_set: Mapping[str, float],
    propensities: Propensities | None = None,
    force: bool = False,
    fitted_on: Mapping[str, object] | None = None,
    split: Callable[[str, float, int], bool] = metrics.in_validation,
    reader_share: float = 1.0,
    key_share: float = 1.0,
) -> Refit:
    """Fit a ranker named `name` on the rankings the store recorded since a time and the clicks that followed,
    gate it on a held-out share of readers (`split`) against the active version (the hand-set weights if none),
    and publish it as the active version when it passes (or `force`). No reader weighs more than `reader_share`
    of the fit, no client more than `key_share`."""
    impressions, scorer = from_feedback(feedback, since, propensities)
    current = None
    with contextlib.suppress(InvalidInput):  # nothing active under this name yet: the hand-set weights are the bar
        current = Ranker.load(registry.path(name)[1])
    fitted, decision = fit_and_gate(
        impressions, scorer, hand_set, current, split=split, reader_share=reader_share, key_share=key_share,
        position_propensities=propensities.to_dict() if propensities else None, **(fitted_on or {}),
    )  # fmt: skip
    version = registry.publish(name, fitted) if decision.passed or force else None
    return Refit(decision, version, len(impressions), sum(i.scored for i in impressions), scorer)
