"""Offline evaluation on MIND-format impressions, every method side by side.

Each impression is replayed on its own: the profile is built from its history column (as clicks), exactly its
candidates are scored, and the per-impression metrics are averaged. Scores are cached per impression and
method in JSONL files, so an interrupted run continues where it stopped; everything random is seeded.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from config.settings import Settings
from core import metrics
from core.errors import InvalidInput
from core.llm import Backend
from core.records import SIGNALS, Article, BlendWeights, Event, Hit, Preferences, Signals
from core.times import parse_time
from feed import explain, signals
from feed.blend import blend_rank, caps_over
from feed.exposure import Exposure, ExposureTally
from feed.learned_ranker import Ranker
from feed.profile import Profile, build_profile
from llm.relevance import DEFAULT_CANDIDATE_TEXT, prompt_version, relevance_requests, scorer_key
from llm.tower import READ_TOKENS, ArticleReader, Tower
from retrieval import stories
from retrieval.embed import Embedder
from retrieval.ingest import RowError, read_mind_news

STALE = {"llm-stale1": 1, "llm-stale2": 2, "llm-stale5": 5}  # the LLM's scores under the profile of k clicks ago
METHODS = ("random", "popularity", "category", "embedding", "llm", "llm+adapter", *STALE, "blend", "ranker")
LLM_METHODS = ("llm", "llm+adapter", *STALE)
PARTS = ("all", "tune", "heldout")
TOP = 10
EXPLAINED = 3  # the top items a feed explains (Settings.explain_top's default)


@dataclass(frozen=True)
class Impression:
    id: str
    user_id: str
    time: float | None
    history: tuple[str, ...]
    candidates: tuple[str, ...]
    labels: tuple[int, ...]


def read_behaviors(path: Path) -> tuple[list[Impression], list[RowError]]:
    """MIND behaviors.tsv: impression_id, user_id, time, history, impressions (NEWSID-LABEL ...)."""
    if not path.is_file():
        raise InvalidInput(f"no such file: {path}")
    impressions, errors = [], []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            fields = line.rstrip("\n").split("\t")
            try:
                if len(fields) != 5:
                    raise InvalidInput(f"expected 5 tab-separated fields, got {len(fields)}")
                impression_id, user_id, when, history, shown = fields
                pairs = [item.rsplit("-", 1) for item in shown.split()]
                if not pairs or any(len(p) != 2 or p[1] not in ("0", "1") for p in pairs):
                    raise InvalidInput("impressions must be NEWSID-0 or NEWSID-1 items")
                impressions.append(
                    Impression(
                        id=impression_id,
                        user_id=user_id,
                        time=parse_time(when, 0.0) if when.strip() else None,
                        history=tuple(history.split()),
                        candidates=tuple(p[0] for p in pairs),
                        labels=tuple(int(p[1]) for p in pairs),
                    )
                )
            except InvalidInput as exc:
                errors.append(RowError(number, str(exc)))
    return impressions, errors


def in_part(impression_id: str, part: str, seed: int) -> bool:
    """The documented split: by impression, half for tuning and half held out, from a seeded hash."""
    if part == "all":
        return True
    bucket = int(hashlib.sha256(f"{seed}:{impression_id}".encode()).hexdigest(), 16) % 2
    return bucket == (0 if part == "tune" else 1)


def select(
    impressions: Sequence[Impression], part: str, seed: int, limit: int | None, skip: int = 0
) -> list[Impression]:
    """The impressions of a part in file order, after skipping the first `skip`, at most `limit` of them."""
    if part not in PARTS:
        raise InvalidInput(f"unknown part {part!r}; expected one of {', '.join(PARTS)}")
    chosen = [i for i in impressions if in_part(i.id, part, seed)][skip:]
    return chosen[:limit] if limit else chosen


class Corpus:
    """The news of a MIND news.tsv with their embeddings (computed once, cached on disk)."""

    def __init__(
        self,
        news: Path,
        embedder: Embedder,
        cache_dir: Path,
        show_progress: bool = True,
        reader: ArticleReader | None = None,
    ) -> None:
        rows = list(read_mind_news(news, 0.0))
        self.articles = {r.id: r for r in rows if isinstance(r, Article)}
        self.malformed = sum(isinstance(r, RowError) for r in rows)
        ids = sorted(self.articles)
        key = _digest(news.read_bytes(), embedder.spec)
        articles = [self.articles[i] for i in ids]
        self.vectors = _cached(cache_dir / f"embeddings-{key}.npy", articles, "embed news", show_progress,
                               lambda chunk: embedder.encode([a.text for a in chunk]))  # fmt: skip
        self.index = {article_id: row for row, article_id in enumerate(ids)}
        # each article's reading by the LLM (llm/tower.py), rounded to float16 as the article store keeps it
        self.readings = None if reader is None else _cached(
            cache_dir / f"readings-{_digest(key, reader.model, READ_TOKENS)}.npy", articles, "read news (LLM)",
            show_progress, lambda chunk: reader(chunk).astype(np.float16).astype(np.float32),
        )  # fmt: skip
        # the copies of one story among these news (retrieval/stories.py), as ingesting them would find them
        found = stories.group(articles, self.vectors)
        self.articles = {i: replace(self.articles[i], story=story) for i, story in zip(ids, found, strict=True)}

    def hit(self, article_id: str) -> Hit:
        row = self.index[article_id]
        return Hit(self.articles[article_id], self.vectors[row], reading=None if self.readings is None else
                   self.readings[row])  # fmt: skip

    def __contains__(self, article_id: str) -> bool:
        return article_id in self.articles


def _cached(
    path: Path, articles: list[Article], desc: str, show_progress: bool, compute: Callable[[list[Article]], np.ndarray]
) -> np.ndarray:
    """One row per article, computed in chunks of 256 the first time and kept in `path` after."""
    if path.is_file():
        return np.load(path)
    from tqdm import tqdm

    chunks = [articles[s : s + 256] for s in range(0, len(articles), 256)]
    rows = np.concatenate([compute(c) for c in tqdm(chunks, desc=desc, unit=" batches", disable=not show_progress)])
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, rows)
    return rows


@dataclass
class Context:
    """One impression, ready to score: the profile from its history and its candidates' signals."""

    impression: Impression
    profile: Profile
    hits: list[Hit]
    labels: list[int]
    popularity: list[float]
    ctr: list[float] | None = None  # each candidate's click-through rate (None: not known, 0)
    coclick: list[float] | None = None  # each candidate's co-clicks with the reader's history (None: 0)
    now: float | None = None  # when the articles' ages are known (MIND's are not: every candidate counts as new)
    history: list[Hit] = field(default_factory=list)  # the history's known articles, oldest first

    def before_last(self, k: int) -> Profile:
        """The profile as it was before the reader's last k clicks (their history without its last k items)."""
        kept = self.history[: max(len(self.history) - k, 0)]
        user, now = self.profile.user_id, self.impression.time or 0.0
        events = [Event(user, h.article.id, "click", now - len(kept) + i) for i, h in enumerate(kept)]
        return build_profile(user, events, Preferences(), {h.article.id: h for h in kept}, now)

    @property
    def embeddings(self) -> np.ndarray:
        return np.stack([h.embedding for h in self.hits])


def leave_one_out_clicks(impressions: Iterable[Impression]) -> tuple[Counter, dict[str, Counter]]:
    """Clicks per article over the evaluated set, and each impression's own, to subtract: an article's
    popularity for an impression is its clicks in the *other* impressions (no label of its own leaks)."""
    total: Counter = Counter()
    own: dict[str, Counter] = {}
    for imp in impressions:
        mine = Counter(c for c, label in zip(imp.candidates, imp.labels, strict=True) if label)
        own[imp.id] = mine
        total.update(mine)
    return total, own


def contexts(impressions: Sequence[Impression], corpus: Corpus) -> Iterable[Context]:
    """Each impression with a known clicked candidate, ready to score. What readers' behaviour says (popularity,
    click-through rate, co-clicks) comes from the *other* impressions: no label of its own leaks."""
    total, own = leave_one_out_clicks(impressions)
    shows = Counter(c for imp in impressions for c in set(imp.candidates))
    engaged = ((imp.user_id or imp.id, a) for imp in impressions for a in (*imp.history, *_clicked(imp)))
    coclicks = signals.CoClicks(engaged, max_pairs=10**9)
    for imp in impressions:
        keep = [i for i, c in enumerate(imp.candidates) if c in corpus]
        if not keep or not any(imp.labels[i] for i in keep):
            continue
        # the history column as clicks a second apart, oldest first: recency order, no noticeable decay
        now = imp.time or 0.0
        known = [a for a in imp.history if a in corpus]
        events = [Event(imp.user_id or imp.id, a, "click", now - len(known) + i) for i, a in enumerate(known)]
        profile = build_profile(imp.user_id or imp.id, events, Preferences(), {a: corpus.hit(a) for a in known}, now)
        hits = [corpus.hit(imp.candidates[i]) for i in keep]
        clicks = total - own[imp.id]  # the other impressions' clicks
        shown = shows - Counter(set(imp.candidates))
        yield Context(
            imp, profile, hits, [imp.labels[i] for i in keep], signals.popularity(clicks, hits),
            ctr=signals.click_through(clicks, shown, hits),
            coclick=coclicks.scores([h.article_id for h in profile.history], hits, imp.user_id or imp.id),
            history=[corpus.hit(a) for a in known],
        )  # fmt: skip


def _clicked(impression: Impression) -> list[str]:
    return [c for c, label in zip(impression.candidates, impression.labels, strict=True) if label]


# -- methods ------------------------------------------------------------------------------------------------
@dataclass
class MethodResult:
    scores: list[float]
    seconds: float
    prompt_tokens: int = 0
    explanations: list[str] = field(default_factory=list)  # sources ("llm"/"template") of the top explanations
    named: list[bool] = field(default_factory=list)  # whether each top-3 explanation names a title or interest


@dataclass
class Evaluator:
    backend: Backend | None
    weights: BlendWeights
    seed: int = 0
    adapter: str | None = None
    explain_top: int = 0
    history_titles: int = 5
    candidate_text: str = DEFAULT_CANDIDATE_TEXT
    ranker: Ranker | None = None
    model: str = ""  # the scorer's model, as the ranker's `scorer` names it
    strategy: str = "pointwise"  # the scorer's strategy, as the ranker's `scorer` names it (Settings.strategy)
    # exposure caps on the blends' top 10 (feed.blend.Caps: per_source, category_share, exploration_share)
    caps: dict[str, float] = field(default_factory=dict)
    half_life_hours: float = 24.0  # freshness, where the articles' ages are known (Settings.half_life_hours)
    tower: Tower | None = None  # the LLM's match of readers and articles (llm/tower.py), as the feed serves it

    def score(self, method: str, ctx: Context, llm: Callable[[str], list[float]]) -> MethodResult:
        start = time.perf_counter()
        tokens = 0
        sources: list[str] = []
        named: list[bool] = []
        if method == "random":
            rng = np.random.default_rng([self.seed, int(_digest(ctx.impression.id), 16) % (2**32)])
            scores = rng.random(len(ctx.hits)).tolist()
        elif method == "popularity":
            scores = list(ctx.popularity)
        elif method == "category":
            scores = [ctx.profile.category_shares.get(h.article.category, 0.0) for h in ctx.hits]
        elif method == "embedding":
            scores = [signals.similarity(ctx.profile, h) for h in ctx.hits]
        elif method in LLM_METHODS:
            adapter = self.adapter if method != "llm" else None
            # stale: as the background scorer left them before the reader's last k clicks (their scores are kept,
            # marked llm-stale, until the rescoring lands): what waiting for the scorer costs
            profile = ctx.profile if method not in STALE else ctx.before_last(STALE[method])
            profile_text = profile.render(self.history_titles)
            articles = [h.article for h in ctx.hits]
            requests = relevance_requests(self.backend, profile_text, articles, adapter, self.candidate_text)
            scores = self.backend.score(requests)
            tokens = self.backend.count_tokens(requests[0].prefix) + sum(
                self.backend.count_tokens(r.suffix) for r in requests
            )
        elif method in ("blend", "ranker"):
            scores, sources, named = self.blend(ctx, llm("llm+adapter" if self.adapter else "llm"), method == "ranker")
        else:
            raise InvalidInput(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
        return MethodResult(scores, time.perf_counter() - start, tokens, sources, named)

    def signals(self, ctx: Context, relevance: Sequence[float]) -> list[Signals]:
        """The feed's own signals (feed.signals.candidate_signals)."""
        return signals.candidate_signals(ctx.profile, ctx.hits, relevance, ctx.popularity, ctx.now,
                                         self.half_life_hours, ctx.ctr, ctx.coclick,
                                         match=signals.tower_match(self.tower, ctx.profile, ctx.hits))  # fmt: skip

    @property
    def scorer(self) -> str:
        """The LLM's scores, named as the recommender names them (Recommender.scorer)."""
        return scorer_key(self.model, self.adapter, self.candidate_text, self.strategy)

    def blend(
        self, ctx: Context, relevance: Sequence[float], learned: bool = False
    ) -> tuple[list[float], list[str], list[bool]]:
        """The product's own ranking with greedy MMR, with the hand-set weights or (`learned`) the reader's weights
        from the learned ranker; a candidate's score is its place, reversed. Also where each of the top 3's
        explanation came from (explain_top: the LLM or the template), and whether each names a history title or an
        interest of the reader, as the feed grounds it."""
        weights = self.weights
        if learned:
            if self.ranker is None:
                raise InvalidInput("method ranker needs a ranker file (--ranker)")
            weights = BlendWeights(**self.ranker.weights(ctx.profile.engaged, self.scorer, self.weights))
        signals = self.signals(ctx, relevance)
        copies = [h.article.story or h.article.id for h in ctx.hits]  # one slot per story, copies last
        placed = blend_rank(signals, ctx.embeddings, weights, stories=copies)
        caps = caps_over([h.article for h in ctx.hits], ctx.profile.top_categories(), self.caps)
        if caps is not None:  # the top 10 under the caps, then the rest in the blend's order
            capped = blend_rank(signals, ctx.embeddings, weights, TOP, caps, copies)
            held = {c.index for c in capped}
            placed = capped + [p for p in placed if p.index not in held]
        scores = metrics.by_place(placed)
        top = [ctx.hits[p.index] for p in placed[:EXPLAINED]]
        groundings = explain.groundings(ctx.profile, top, [signals[p.index] for p in placed[:EXPLAINED]], weights,
                                        self.history_titles)  # fmt: skip
        named = [g.history is not None or bool(g.interests) for g in groundings]
        sources: list[str] = []
        if self.explain_top and self.backend is not None:
            n = self.explain_top
            written = explain.write(self.backend, [h.article for h in top[:n]], groundings[:n], n, self.adapter)
            sources = [source for _, source in written.values()]
        return scores, sources, named


# -- the run ------------------------------------------------------------------------------------------------
@dataclass
class MethodReport:
    method: str
    impressions: int
    auc: float
    auc_se: float
    mrr: float
    ndcg5: float
    ndcg10: float
    diversity: float
    coverage: float
    candidates_per_second: float
    prompt_tokens_per_candidate: float
    grounded_share: float | None
    named_share: float | None = None  # top-3 explanations that name a history title or an interest of the reader
    exposure: Exposure | None = None  # of the top 10
    segments: dict[str, tuple[float, float, int]] = field(default_factory=dict)  # AUC, its error, impressions


HISTORY_SEGMENTS = ((5, "history < 5"), (20, "history 5-19"), (float("inf"), "history 20+"))
SEGMENT_ORDER = {label: i for i, (_, label) in enumerate(HISTORY_SEGMENTS)}  # then the categories, largest first


def segments_of(profile: Profile) -> list[str]:
    """The reader segments an impression counts in: the length of the reader's history, and the category they
    read most."""
    length = next(label for bound, label in HISTORY_SEGMENTS if profile.engaged < bound)
    return [length, f"reads most: {next(iter(profile.most_read(1)), 'nothing yet')}"]


def method_key(method: str, evaluator: Evaluator, model: str) -> str:
    """What a cached score depends on: a different model, adapter, prompt or weights starts a new cache."""
    parts: list[object] = [method, evaluator.seed]
    if method in (*LLM_METHODS, "blend", "ranker"):
        parts += [model, prompt_version(evaluator.candidate_text), evaluator.history_titles]
    if method == "llm+adapter" or (method in (*STALE, "blend", "ranker") and evaluator.adapter):
        parts.append(evaluator.adapter)
    if method in ("blend", "ranker"):
        parts += [sorted(evaluator.weights.items()), evaluator.explain_top]
        if evaluator.tower is not None:
            parts.append(evaluator.tower.card)
        if evaluator.caps:
            parts.append(sorted(evaluator.caps.items()))
    if method == "ranker" and evaluator.ranker is not None:
        parts.append(json.dumps(asdict(evaluator.ranker), sort_keys=True))
    return _digest(json.dumps(parts, default=str))


class ScoreCache:
    """Per-impression results of one method, appended as JSON lines and flushed as they come."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done: dict[str, dict] = {}
        if path.is_file():
            for line in path.read_text().splitlines():
                try:
                    row = json.loads(line)
                    self.done[row["id"]] = row
                except (json.JSONDecodeError, KeyError):
                    continue  # a line cut short by an interruption: that impression is simply redone
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("a", encoding="utf-8")

    def add(self, impression_id: str, result: MethodResult) -> dict:
        row = {"id": impression_id, "scores": result.scores, "seconds": result.seconds,
               "prompt_tokens": result.prompt_tokens, "explanations": result.explanations,
               "named": result.named}  # fmt: skip
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        self.done[impression_id] = row
        return row

    def close(self) -> None:
        self._file.close()


def run(
    impressions: Sequence[Impression],
    corpus: Corpus,
    evaluator: Evaluator,
    methods: Sequence[str],
    cache_dir: Path,
    model: str,
    show_progress: bool = True,
) -> tuple[dict[str, dict[str, dict]], list[Context]]:
    """Score every impression with every method (LLM scores first: the blend reads them). Returns the rows
    per method and impression id (the blend's LLM scores included), and the contexts that were scored."""
    from tqdm import tqdm

    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise InvalidInput(f"unknown method {unknown[0]!r}; expected one of {', '.join(METHODS)}")
    if "llm+adapter" in methods and not evaluator.adapter:
        raise InvalidInput("method llm+adapter needs --adapter")
    needed = list(methods)
    if "blend" in needed or "ranker" in needed:
        base = "llm+adapter" if evaluator.adapter else "llm"
        needed = [base, *[m for m in needed if m != base]]
    needed.sort(key=lambda m: m in ("blend", "ranker"))  # the blends last: they read the LLM's scores
    prepared = list(contexts(impressions, corpus))
    caches = {m: ScoreCache(cache_dir / f"{m}-{method_key(m, evaluator, model)}.jsonl") for m in needed}
    try:
        for method in needed:
            cache = caches[method]
            todo = [c for c in prepared if c.impression.id not in cache.done]
            for ctx in tqdm(todo, desc=method, unit=" impressions", disable=not show_progress or not todo):
                cache.add(
                    ctx.impression.id,
                    evaluator.score(method, ctx, lambda m, c=ctx: caches[m].done[c.impression.id]["scores"]),
                )
    finally:
        for cache in caches.values():
            cache.close()
    return {m: caches[m].done for m in needed}, prepared


def summarize(
    method: str, rows: dict[str, dict], prepared: Sequence[Context], inputs: dict[str, dict] | None = None
) -> MethodReport:
    """Metrics of one method. `inputs` are the rows of a method it builds on (the blend's LLM scores), whose
    time and prompt tokens count toward its cost."""
    aucs, mrrs, n5, n10, diversity, coverage = [], [], [], [], [], []
    seconds = tokens = candidates = 0.0
    sources: list[str] = []
    named: list[bool] = []
    shown = ExposureTally(max_labels=None, max_items=None)
    by_segment: dict[str, list[float]] = {}
    for ctx in prepared:
        row = rows[ctx.impression.id]
        scores = row["scores"]
        value = metrics.auc(ctx.labels, scores)
        if value is not None:
            aucs.append(value)
            for segment in segments_of(ctx.profile):
                by_segment.setdefault(segment, []).append(value)
        mrrs.append(metrics.mrr(ctx.labels, scores))
        n5.append(metrics.ndcg(ctx.labels, scores, 5))
        n10.append(metrics.ndcg(ctx.labels, scores, 10))
        top = metrics.ranking(scores)[:TOP]
        diversity.append(metrics.intra_list_distance(ctx.embeddings[top]))
        coverage.append(len({ctx.hits[i].article.category for i in top}))
        usual = ctx.profile.top_categories()
        shown.add([h.article for h in ctx.hits], [ctx.hits[i].article for i in top], usual)
        for source in (row, inputs[ctx.impression.id]) if inputs else (row,):
            seconds += source["seconds"]
            tokens += source["prompt_tokens"]
        candidates += len(scores)
        sources += row.get("explanations", [])
        named += row.get("named", [])
    return MethodReport(
        method=method,
        impressions=len(prepared),
        auc=100 * float(np.mean(aucs)),
        auc_se=100 * metrics.standard_error(aucs),
        mrr=100 * float(np.mean(mrrs)),
        ndcg5=100 * float(np.mean(n5)),
        ndcg10=100 * float(np.mean(n10)),
        diversity=float(np.mean(diversity)),
        coverage=float(np.mean(coverage)),
        candidates_per_second=candidates / seconds if seconds > 0 else float("inf"),
        prompt_tokens_per_candidate=tokens / candidates if candidates else 0.0,
        grounded_share=(sources.count("llm") / len(sources)) if sources else None,
        named_share=sum(named) / len(named) if named else None,
        exposure=shown.snapshot(),
        segments={
            name: (100 * float(np.mean(v)), 100 * metrics.standard_error(v), len(v))
            for name, v in sorted(by_segment.items(), key=lambda kv: (SEGMENT_ORDER.get(kv[0], 9), -len(kv[1])))
        },
    )


def fit_weights(
    evaluator: Evaluator, rows: dict[str, dict], prepared: Sequence[Context], keep: BlendWeights
) -> BlendWeights:
    """Fit the weights of the fitted signals (core.records.SIGNALS) by logistic regression on clicks; the
    others (freshness and diversity: no times on MIND, and a reranking term) keep their values from `keep`.
    The fitted weights are scaled to fill the rest of a unit budget (boosts weigh outside it); a negative one is
    clipped to 0."""
    fitted = [spec.name for spec in SIGNALS if spec.fitted]
    outside = {*fitted, *(spec.name for spec in SIGNALS if spec.boost)}
    features, labels = [], []
    for ctx in prepared:
        for s, label in zip(evaluator.signals(ctx, rows[ctx.impression.id]["scores"]), ctx.labels, strict=True):
            features.append([getattr(s, name) for name in fitted])
            labels.append(label)
    w = np.clip(metrics.fit_logistic(np.array(features), np.array(labels))[: len(fitted)], 0.0, None)
    budget = max(1.0 - sum(value for name, value in keep.items() if name not in outside), 0.0)
    w = w / w.sum() * budget if w.sum() > 0 else w
    return BlendWeights(**{**keep, **{name: round(float(v), 3) for name, v in zip(fitted, w, strict=True)}})


def ranker_impressions(evaluator: Evaluator, rows: dict[str, dict], prepared: Sequence[Context]) -> list:
    """The replayed impressions as a learned ranker sees them (feed.learned_ranker.Impression), with these LLM
    scores."""
    from feed import learned_ranker

    return [
        learned_ranker.Impression(
            ctx.impression.id,
            tuple(evaluator.signals(ctx, rows[ctx.impression.id]["scores"])),
            tuple(ctx.labels),
            ctx.profile.engaged,
            scored=True,
        )
        for ctx in prepared
    ]


def fit_ranker(evaluator: Evaluator, rows: dict[str, dict], prepared: Sequence[Context], **fitted_on) -> Ranker:
    """A learned ranker (feed.learned_ranker) fitted on the clicks of these impressions, over the LLM scores in
    `rows`."""
    from feed import learned_ranker

    return learned_ranker.fit_impressions(ranker_impressions(evaluator, rows, prepared), evaluator.scorer, **fitted_on)


def report_markdown(reports: Sequence[MethodReport], title: str) -> str:
    lines = [
        f"### {title}",
        "",
        "| method | AUC | MRR | nDCG@5 | nDCG@10 | ILD@10 | categories@10 | candidates/s | prompt tokens/candidate |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in reports:
        speed = "∞" if r.candidates_per_second == float("inf") else f"{r.candidates_per_second:,.0f}"
        tokens = f"{r.prompt_tokens_per_candidate:.1f}" if r.prompt_tokens_per_candidate else "–"
        lines.append(
            f"| {r.method} | {r.auc:.2f} ± {r.auc_se:.2f} | {r.mrr:.2f} | {r.ndcg5:.2f} | {r.ndcg10:.2f} | "
            f"{r.diversity:.3f} | {r.coverage:.2f} | {speed} | {tokens} |"
        )
    for r in reports:
        if r.named_share is not None:
            lines.append(f"\nTop-3 explanations that name a history title or an interest of the reader ({r.method}): "
                         f"{100 * r.named_share:.0f}%.")  # fmt: skip
    grounded = [r for r in reports if r.grounded_share is not None]
    for r in grounded:
        lines.append(f"\nExplanations written by the LLM that passed the grounding check ({r.method}): "
                     f"{100 * r.grounded_share:.0f}%.")  # fmt: skip
    lines.append("\nAUC ± its standard error over impressions; metrics ×100, averaged per impression (as in MIND). "
                 "No publication times in this data: mean age of the top 10 is not reported.")  # fmt: skip
    return "\n".join(lines + exposure_markdown(reports) + segments_markdown(reports)) + "\n"


def exposure_markdown(reports: Sequence[MethodReport], rows: int = 12) -> list[str]:
    """How each method shares the top 10: by category and by source, against their share among candidates."""
    names = " | ".join(r.method for r in reports)
    lines = ["", "#### Exposure of the top 10", "",
             f"| | {names} |", "|---|" + "---:|" * len(reports),
             "| Gini of item exposure | " + " | ".join(f"{r.exposure.gini:.3f}" for r in reports) + " |",
             "| feeds with an item outside the reader's top 2 categories | "
             + " | ".join(f"{100 * r.exposure.outside:.1f}%" for r in reports) + " |",
             "| top-10 slots outside the reader's top 2 categories | "
             + " | ".join(f"{100 * r.exposure.outside_slots:.1f}%" for r in reports) + " |"]  # fmt: skip
    for kind in ("category", "source"):
        table = [getattr(r.exposure, kind) for r in reports]
        lines += ["", f"| {kind}: share of top-10 slots (share among candidates) | {names} |",
                  "|---|" + "---:|" * len(reports)]  # fmt: skip
        for label, (_, offered) in list(table[0].items())[:rows]:
            lines.append(f"| {label} ({100 * offered:.1f}%) | " + " | ".join(
                f"{100 * t[label][0]:.1f}%" for t in table) + " |")  # fmt: skip
    return lines


def segments_markdown(reports: Sequence[MethodReport], rows: int = 12) -> list[str]:
    """AUC per reader segment: a change that helps heavy readers and hurts new ones shows here."""
    names = " | ".join(r.method for r in reports)
    lines = ["", "#### AUC by reader segment", "", f"| segment (impressions) | {names} |",
             "|---|" + "---:|" * len(reports)]  # fmt: skip
    for name, (_, _, n) in list(reports[0].segments.items())[:rows]:
        cells = " | ".join(f"{r.segments[name][0]:.2f} ± {r.segments[name][1]:.2f}" for r in reports)
        lines.append(f"| {name} ({n}) | {cells} |")
    return lines


def plot(reports: Sequence[MethodReport], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.method for r in reports]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(1.3 * len(names) + 2, 4))
    ax.bar(x - 0.2, [r.auc for r in reports], 0.4, yerr=[r.auc_se for r in reports], capsize=3, label="AUC")
    ax.bar(x + 0.2, [r.ndcg10 for r in reports], 0.4, label="nDCG@10")
    ax.set_xticks(x, names)
    ax.set_ylabel("×100")
    ax.set_ylim(0, 100)
    ax.axhline(50, color="grey", linewidth=0.8, linestyle=":")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_predictions(path: Path, rows: dict[str, dict], prepared: Sequence[Context]) -> None:
    """MIND leaderboard format: `impression_id [r1,r2,...]`, each candidate's rank in input order.

    Candidates missing from the news file are ranked last, after every scored one, in their input order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        for ctx in prepared:
            scores = dict(zip((h.article.id for h in ctx.hits), rows[ctx.impression.id]["scores"], strict=True))
            full = [scores.get(c, float("-inf")) for c in ctx.impression.candidates]
            out.write(f"{ctx.impression.id} [{','.join(map(str, metrics.ranks(full)))}]\n")


def _digest(*parts: object) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else str(part).encode())
    return h.hexdigest()[:16]


# -- `newsrank eval`: one run, from options to reports -----------------------------------------------------------
@dataclass(frozen=True)
class EvalRun:
    """What `newsrank eval` is asked to do (its options)."""

    news: Path
    behaviors: Path
    methods: tuple[str, ...] = ("blend",)
    part: str = "all"
    limit: int | None = None
    skip: int = 0
    seed: int = 0
    adapter: str | None = None  # a registered NAME[@VERSION], or a PEFT adapter folder
    explain: int = 0  # explain the blend's top N per impression
    ranker: Path | None = None  # a ranker file, for method ranker
    fit_weights: bool = False
    fit_ranker: Path | None = None  # fit a learned ranker on these impressions and write it here
    predictions: Path | None = None
    report: Path | None = None
    cache: Path = Path("data/eval-cache")


def evaluate(
    options: EvalRun,
    settings: Settings,
    open_backend: Callable[[], Backend],
    adapter_folder: Callable[[str], tuple[str, Path]],
    say: Callable[[str], None] = print,
    tower: Tower | None = None,
) -> list[MethodReport]:
    """Replay the impressions with every method asked for, print (`say`) the report, and write what was asked
    for (fitted weights, a fitted ranker, predictions, a markdown report). The LLM is loaded only when a method
    needs it. `tower`: the LLM's match of readers and articles the blends read, as the feed serves it."""
    methods = list(options.methods)
    if "ranker" in methods and not options.ranker:
        raise InvalidInput("method ranker needs a ranker file (--ranker FILE; --fit-ranker FILE makes one)")
    fits = options.fit_weights or options.fit_ranker is not None
    needs_llm = fits or any(m in (*LLM_METHODS, "blend", "ranker") for m in methods)
    if options.adapter and not needs_llm:
        raise InvalidInput(f"--adapter is for methods that use the LLM; {', '.join(methods)} do not")
    impressions, errors = read_behaviors(options.behaviors)
    if errors:
        first = errors[0]
        say(f"{options.behaviors}: {len(errors)} malformed rows skipped, e.g. line {first.line}: {first.reason}")
    chosen = select(impressions, options.part, options.seed, options.limit, options.skip)
    if not chosen:
        raise InvalidInput(f"no impressions in part {options.part!r}")
    reader = tower.article_reader(settings.model_cache, settings.threads) if tower else None
    corpus = Corpus(options.news, Embedder(settings.embedder), options.cache, reader=reader)
    backend = open_backend() if needs_llm else None
    if backend is not None:
        backend.warm()  # so the model's loading time does not count as scoring time
    adapter = None
    if options.adapter and backend is not None:
        adapter, folder = adapter_folder(options.adapter)
        backend.load_adapter(adapter, str(folder))
    evaluator = Evaluator(
        backend, settings.weights.frozen(), options.seed, adapter, options.explain, settings.history_titles,
        settings.candidate_text, ranker=Ranker.load(options.ranker) if options.ranker else None,
        model=backend.model if backend else "", strategy=settings.strategy, caps=settings.exposure_caps, tower=tower,
    )  # fmt: skip
    if evaluator.ranker is not None and evaluator.ranker.fit_for(evaluator.scorer) is evaluator.ranker.without_llm:
        say(f"note: the ranker was fitted for the scorer {evaluator.ranker.scorer}, not {evaluator.scorer}: "
            "it ranks with its fit without the LLM")  # fmt: skip
    base = "llm+adapter" if adapter else "llm"
    if fits and base not in methods:
        methods = [base, *methods]
    model_id = f"{settings.backend}:{settings.llm}"
    if settings.backend == "transformers" and needs_llm:
        from llm.backends.transformers import weights_dtype

        if (dtype := weights_dtype(settings.llm_dtype)) != "float32":  # float32's caches keep their names
            model_id += f":{dtype}"
    rows, prepared = run(chosen, corpus, evaluator, methods, options.cache, model_id)
    say(f"{len(prepared)} impressions evaluated ({options.part} part, seed {options.seed}), "
        f"{len(chosen) - len(prepared)} skipped (no known clicked candidate)")  # fmt: skip
    reports = [summarize(m, rows[m], prepared, rows[base] if m in ("blend", "ranker") else None) for m in methods]
    title = f"{options.behaviors.parent.name or 'MIND'}, {options.part} part, {len(prepared)} impressions"
    table = report_markdown(reports, title)
    say(table)
    if options.fit_weights:
        fitted = fit_weights(evaluator, rows[base], prepared, settings.weights.frozen())
        say(f"fitted blend weights ({base} relevance; logistic regression on the clicks of these impressions):")
        for name, value in fitted.items():
            say(f"  NEWSRANK_WEIGHTS__{name.upper()}={value}")
    if options.fit_ranker:
        source = f"{options.behaviors} {options.part} part"
        fit_ranker(evaluator, rows[base], prepared, source=source).save(options.fit_ranker)
        say(f"ranker fitted on {len(prepared)} impressions ({base} relevance) written to {options.fit_ranker}")
    if options.predictions:
        write_predictions(options.predictions, rows[methods[0]], prepared)
        say(f"predictions ({methods[0]}) written to {options.predictions}")
    if options.report:
        png = options.report.with_suffix(".png")
        plot(reports, png, title)
        options.report.parent.mkdir(parents=True, exist_ok=True)
        options.report.write_text(table + f"\n![AUC and nDCG@10 per method]({png.name})\n")
        say(f"report written to {options.report} and {png}")
    return reports
