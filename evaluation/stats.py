"""The operator's view: the five things a news platform judges a recommender by, from what readers did with feeds.

Relevance (click-through per item shown and per feed, the mean position of a click), diversity (intra-list
distance, categories per feed), freshness (the mean age of what was shown and of what was clicked), interaction
(likes, comments and shares per item shown) and satisfaction (the mean rating, the share of ratings of 4 or 5);
per day or hour and per experiment arm, each with a 95 % confidence interval, and each arm's difference from the
first (the control) with its own interval.

Every metric is a ratio of sums over feeds (a mean over feeds is one with a denominator of 1 each), so the feed is
the unit of sampling: its interval comes from the delta method over feeds, which allows for the items of one feed
moving together. Pure functions over core.records.FeedOutcome; the store gathers the outcomes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from config.experiment import Experiment
from core.errors import InvalidInput
from core.records import FeedOutcome
from core.stores import FeedbackStore
from core.times import parse_time
from feed import position

Z95 = 1.959964
BUCKETS = {"day": 86400, "hour": 3600}
DEFAULT_DAYS = 7
TOP_ARTICLES = 10  # the most shown and the most clicked articles a report lists
MAX_DAYS = {"day": 366, "hour": 31}  # what one report may cover
Part = Callable[[FeedOutcome], float]


@dataclass(frozen=True)
class Metric:
    name: str
    group: str  # which of the five it measures
    meaning: str
    numerator: Part
    denominator: Part
    better: str = "higher"  # which way is better, for the dashboard ("lower", "neither")
    share: bool = False  # a proportion (in [0, 1]): its interval is Wilson's, which stays in [0, 1]


def _clicks(o: FeedOutcome) -> float:
    return float(len(o.clicked))


METRICS = (
    Metric("ctr", "relevance", "clicked items per item shown", _clicks, lambda o: o.shown, share=True),
    Metric("feed_ctr", "relevance", "share of feeds with a click", lambda o: float(bool(o.clicked)), lambda o: 1.0,
           share=True),
    Metric("click_position", "relevance", "mean position of a clicked item", lambda o: sum(p for p, _ in o.clicked),
           _clicks, "lower"),
    Metric("intra_list_distance", "diversity", "mean pairwise cosine distance of a feed's items",
           lambda o: o.intra_list_distance or 0.0, lambda o: float(o.intra_list_distance is not None)),
    Metric("categories", "diversity", "distinct categories per feed", lambda o: o.categories, lambda o: 1.0),
    Metric("age_shown_hours", "freshness", "mean age of the items shown, hours", lambda o: o.shown_age_hours,
           lambda o: o.shown, "lower"),
    Metric("age_clicked_hours", "freshness", "mean age of the items clicked, hours",
           lambda o: sum(age for _, age in o.clicked), _clicks, "lower"),
    Metric("likes", "interaction", "likes per item shown", lambda o: o.likes, lambda o: o.shown),
    Metric("comments", "interaction", "comments per item shown", lambda o: o.comments, lambda o: o.shown),
    Metric("shares", "interaction", "shares per item shown", lambda o: o.shares, lambda o: o.shown),
    Metric("rating", "satisfaction", "mean rating (1-5)", lambda o: sum(o.ratings), lambda o: len(o.ratings)),
    Metric("rating_high", "satisfaction", "share of ratings of 4 or 5", lambda o: sum(r >= 4 for r in o.ratings),
           lambda o: len(o.ratings), share=True),
)  # fmt: skip
BY_NAME = {m.name: m for m in METRICS}


@dataclass(frozen=True)
class Estimate:
    value: float | None  # None: nothing to estimate from (no denominator)
    low: float | None
    high: float | None
    n: int  # feeds that count towards it (a non-zero denominator)

    def as_dict(self) -> dict[str, float | int | None]:
        return {"value": self.value, "low": self.low, "high": self.high, "n": self.n}


def ratio(pairs: Sequence[tuple[float, float]]) -> tuple[float | None, float, int]:
    """Σ numerator / Σ denominator over feeds, its standard error by the delta method, and the feeds counted."""
    pairs = [(y, x) for y, x in pairs if x]
    n = len(pairs)
    total = sum(x for _, x in pairs)
    if not n or not total:
        return None, math.inf, n
    r = sum(y for y, _ in pairs) / total
    if n < 2:
        return r, math.inf, n
    mean_x = total / n
    residual = sum((y - r * x) ** 2 for y, x in pairs) / (n - 1)
    return r, math.sqrt(residual / n) / mean_x, n


def estimate(metric: Metric, outcomes: Iterable[FeedOutcome]) -> Estimate:
    pairs = [(metric.numerator(o), metric.denominator(o)) for o in outcomes]
    value, se, n = ratio(pairs)
    if metric.share and value is not None:
        return wilson(value, se, sum(x for _, x in pairs), n)
    return _interval(value, se, n)


def wilson(p: float, se: float, count: float, n: int) -> Estimate:
    """Wilson's score interval for a proportion p, at the effective sample size its delta-method standard error
    implies (p(1 - p) / se², which allows for the items of one feed moving together; the items counted where the
    error says nothing: one feed, or no spread). It stays in [0, 1] and is not centred on p near the edges."""
    p = min(max(p, 0.0), 1.0)
    size = p * (1 - p) / se**2 if 0 < se < math.inf and 0 < p < 1 else count
    if size <= 0:
        return Estimate(round(p, 6), None, None, n)
    z2 = Z95**2
    centre = (p + z2 / (2 * size)) / (1 + z2 / size)
    half = Z95 * math.sqrt(p * (1 - p) / size + z2 / (4 * size**2)) / (1 + z2 / size)
    return Estimate(round(p, 6), round(max(0.0, centre - half), 6), round(min(1.0, centre + half), 6), n)


def difference(metric: Metric, treated: Sequence[FeedOutcome], control: Sequence[FeedOutcome]) -> Estimate:
    """The treated arm's value minus the control's, with the interval of independent samples."""
    a, se_a, n_a = ratio([(metric.numerator(o), metric.denominator(o)) for o in treated])
    b, se_b, n_b = ratio([(metric.numerator(o), metric.denominator(o)) for o in control])
    if a is None or b is None:
        return Estimate(None, None, None, min(n_a, n_b))
    return _interval(a - b, math.hypot(se_a, se_b), min(n_a, n_b))


def _interval(value: float | None, se: float, n: int) -> Estimate:
    if value is None:
        return Estimate(None, None, None, n)
    if math.isinf(se):  # one feed says nothing about how much it varies
        return Estimate(round(value, 6), None, None, n)
    return Estimate(round(value, 6), round(value - Z95 * se, 6), round(value + Z95 * se, 6), n)


def bucket_start(ts: float, bucket: str) -> float:
    size = BUCKETS[bucket]
    return math.floor(ts / size) * size


def summarise(
    outcomes: Sequence[FeedOutcome],
    bucket: str = "day",
    by_arm: bool = False,
    metrics: Sequence[str] = (),
    control: str | None = None,
    experiment: str | None = None,
) -> dict:
    """Every metric per time bucket and arm (one series "all" unless `by_arm`), over the whole window per arm,
    and, by arm, each arm's difference from the control (default: the first arm by name). `experiment`: by arm,
    only that experiment's feeds (and feeds made in none) count."""
    if bucket not in BUCKETS:
        raise InvalidInput(f"unknown bucket {bucket!r}; expected one of {', '.join(BUCKETS)}")
    unknown = set(metrics) - set(BY_NAME)
    if unknown:
        raise InvalidInput(f"unknown metrics {sorted(unknown)}; known: {', '.join(BY_NAME)}")
    chosen = [BY_NAME[m] for m in metrics] or list(METRICS)

    def arm_of(o: FeedOutcome) -> str:
        return (o.arm or "none") if by_arm else "all"

    if by_arm and experiment is not None:  # an earlier experiment's arms are not this one's, whatever their names
        outcomes = [o for o in outcomes if o.arm is None or o.experiment in (experiment, None)]

    arms: dict[str, list[FeedOutcome]] = {}
    series: dict[tuple[float, str], list[FeedOutcome]] = {}
    for o in outcomes:
        arms.setdefault(arm_of(o), []).append(o)
        series.setdefault((bucket_start(o.created_at, bucket), arm_of(o)), []).append(o)

    def row(group: Sequence[FeedOutcome]) -> dict:
        return {"feeds": len(group), **{m.name: estimate(m, group).as_dict() for m in chosen}}

    out = {
        "bucket": bucket,
        "metrics": {m.name: {"group": m.group, "meaning": m.meaning, "better": m.better} for m in chosen},
        "series": [
            {"start": datetime.fromtimestamp(start, UTC).isoformat(), "arm": arm, **row(group)}
            for (start, arm), group in sorted(series.items())
        ],
        "total": {arm: row(group) for arm, group in sorted(arms.items())},
        "differences": {},
    }
    if by_arm and len(arms) > 1:
        control = control if control in arms else sorted(arms)[0]
        out["control"] = control
        out["differences"] = {
            arm: {m.name: difference(m, group, arms[control]).as_dict() for m in chosen}
            for arm, group in sorted(arms.items())
            if arm != control
        }
    return out


def report(
    feedback: FeedbackStore,
    since: Any,
    until: Any,
    now: float,
    bucket: str = "day",
    by_arm: bool = False,
    metrics: Sequence[str] = (),
    experiment: Experiment | None = None,
) -> dict[str, Any]:
    """`summarise` over the feeds made in [since, until) (ISO-8601 or epoch seconds; default: the last 7 days),
    the experiment's first arm the control."""
    end = parse_time(until, now + 1)  # by default up to now, what was made this second included
    start = parse_time(since, end - DEFAULT_DAYS * 86400)
    if not start < end:
        raise InvalidInput("since must be before until")
    if end - start > MAX_DAYS[bucket if bucket in MAX_DAYS else "day"] * 86400:
        raise InvalidInput(f"{bucket}ly stats cover at most {MAX_DAYS.get(bucket, MAX_DAYS['day'])} days at once")
    outcomes = feedback.feed_outcomes(start, end)
    summary = summarise(outcomes, bucket, by_arm, metrics, control=next(iter(experiment.arms)) if experiment else None,
                        experiment=experiment.name if experiment else None)  # fmt: skip
    positions = position.estimate(position.explored(outcomes), max((o.shown for o in outcomes), default=1))
    counts = feedback.article_counts(start, end)
    articles = [{"article_id": a, "title": title, "shown": shown, "clicked": clicked}
                for a, (title, shown, clicked) in counts.items()]  # fmt: skip
    by_shown = sorted(articles, key=lambda a: (-a["shown"], -a["clicked"], a["article_id"]))
    clicked = [a for a in articles if a["clicked"]]
    by_clicks = sorted(clicked, key=lambda a: (-a["clicked"], -a["shown"], a["article_id"]))
    top = {"most_shown": by_shown[:TOP_ARTICLES], "most_clicked": by_clicks[:TOP_ARTICLES]}
    window = {edge: datetime.fromtimestamp(t, UTC).isoformat() for edge, t in (("since", start), ("until", end))}
    return {**window, "experiment": experiment.name if experiment else None, **summary, "articles": top,
            "position_bias": positions.to_dict()}  # fmt: skip


def table(report: dict) -> str:
    """A report's totals as text: one row per metric, one column per arm (value [low, high]), then each arm's
    difference from the control."""

    def cell(e: dict) -> str:
        if e["value"] is None:
            return "-"
        bounds = f" [{e['low']:.4g}, {e['high']:.4g}]" if e["low"] is not None else ""
        return f"{e['value']:.4g}{bounds}"

    arms = list(report["total"])
    columns = arms + [f"{arm} - {report['control']}" for arm in report["differences"]]
    rows = [["feeds", *(str(report["total"][a]["feeds"]) for a in arms), *("" for _ in report["differences"])]]
    for name in report["metrics"]:
        rows.append([name, *(cell(report["total"][a][name]) for a in arms),
                     *(cell(d[name]) for d in report["differences"].values())])  # fmt: skip
    rows.insert(0, ["metric", *columns])
    widths = [max(len(r[i]) for r in rows) for i in range(len(columns) + 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines) if arms else "no feeds in this window"
