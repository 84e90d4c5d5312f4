"""The ranking loop: profile → candidates → LLM relevance → blend → explanations → stored record."""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from agent import explain, prompts
from agent.listwise import Permutation, listwise_rank, parse_permutation, rank_scores
from agent.profile import Profile, build_profile
from agent.scoring import blend_rank, cosine_similarity, freshness, without
from agent.settings import Settings
from core.errors import EmptyStore, InvalidInput, NotFound, model_failure
from core.llm import Backend, GenerateRequest, ScoreRequest
from core.records import DIVERSITY, Article, Hit, RankedItem, RankingRecord, Signals
from core.stores import AdapterResolver, ArticleStore, FeedbackStore

log = logging.getLogger("newsrank.ranking")

SYSTEM = "system.v1"
RELEVANCE = "relevance.v1"
CANDIDATE = "candidate.v2"  # untrusted article text delimited and neutralised (docs/RELIABILITY.md)
LISTWISE = "listwise.v1"
PROMPT_VERSION = f"{RELEVANCE}+{CANDIDATE}+profile.v1"
SPLIT = "\x00CANDIDATE\x00"  # where the shared prefix ends and a candidate's own text begins
MAX_K = 100
LISTWISE_TOKENS = 60


@dataclass(frozen=True)
class FeedRequest:
    user_id: str
    k: int = 10
    explain: bool = True
    categories: tuple[str, ...] = ()  # only these categories, if any
    adapter: str | None = None
    exclude_categories: tuple[str, ...] = ()  # never these (besides the reader's mutes)
    max_age_hours: float | None = None  # only articles at most this old (default: the recency window, widened
    # when empty)

    def __post_init__(self) -> None:
        if not self.user_id or not self.user_id.strip():
            raise InvalidInput("user_id must not be empty")
        if not 1 <= self.k <= MAX_K:
            raise InvalidInput(f"k must be between 1 and {MAX_K}")
        if self.max_age_hours is not None and self.max_age_hours <= 0:
            raise InvalidInput("max_age_hours must be positive")


@dataclass(frozen=True)
class FeedItem:
    article: Article
    record: RankedItem


@dataclass(frozen=True)
class Feed:
    ranking_id: str
    user_id: str
    cold_start: bool
    items: tuple[FeedItem, ...]
    profile_text: str
    timings: dict[str, float] = field(default_factory=dict)
    adapter: str | None = None  # the adapter version that scored it (name@version), if any
    degraded: tuple[str, ...] = ()  # parts done without the LLM because it failed: relevance, explanations


def candidate_text(article: Article, with_abstract: bool = False, template: str = CANDIDATE) -> str:
    return prompts.render(
        template,
        title=article.title,
        category=article.category,
        subcategory=article.subcategory,
        abstract=article.abstract if with_abstract else "",
    )


def relevance_requests(
    backend: Backend,
    profile_text: str,
    articles: Sequence[Article],
    adapter: str | None = None,
    candidate_template: str = CANDIDATE,
) -> list[ScoreRequest]:
    """The pointwise prompts: one shared prefix (system, profile, question), one suffix per candidate.

    Training export renders examples through this same function, so served and trained prompts match.
    """
    user = prompts.render(RELEVANCE, profile=profile_text, candidate=SPLIT)
    prefix, tail = backend.chat_prompt(prompts.render(SYSTEM), user).split(SPLIT)
    return [ScoreRequest(prefix, candidate_text(a, template=candidate_template) + tail, adapter) for a in articles]


class Recommender:
    def __init__(
        self,
        articles: ArticleStore,
        feedback: FeedbackStore,
        backend: Backend,
        settings: Settings,
        clock: Callable[[], float] = time.time,
        adapters: AdapterResolver | None = None,
    ) -> None:
        self.articles = articles
        self.feedback = feedback
        self.backend = backend
        self.settings = settings
        self.clock = clock
        self.adapters = adapters

    def use_adapter(self, reference: str | None) -> str | None:
        """The backend's name for the adapter a request names ("clicks" = its active version, "clicks@3" = that
        version), loading it on first use. A newly activated version is picked up on the next request."""
        if reference is None or self.adapters is None:
            return reference
        version = self.adapters.resolve(reference)
        if version.key not in self.backend.adapters:
            self.backend.load_adapter(version.key, str(version.path))
        return version.key

    # -- profile ------------------------------------------------------------------------------------------
    def profile(self, user_id: str) -> Profile:
        s = self.settings
        events = self.feedback.events(user_id)
        prefs = self.feedback.preferences(user_id)
        explicit = self.articles.embedder.encode([", ".join(prefs.interests)])[0] if prefs.interests else None
        return build_profile(
            user_id,
            events,
            prefs,
            self.articles.get([e.article_id for e in events]),
            self.clock(),
            half_life_days=s.interest_half_life_days,
            top_interests=s.top_interests,
            explicit_vector=explicit,
        )

    # -- candidates ---------------------------------------------------------------------------------------
    def candidates(
        self,
        profile: Profile,
        categories: Sequence[str] = (),
        exclude_categories: Sequence[str] = (),
        max_age_hours: float | None = None,
    ) -> list[Hit]:
        """Unseen, unmuted articles from the recency window: nearest to the profile, plus the freshest
        (exploration) or, for a cold-start reader, the most popular and the freshest."""
        s = self.settings
        excluded = list(dict.fromkeys((*profile.mutes, *exclude_categories)))
        filters = dict(categories=list(categories) or None, exclude_categories=excluded or None)
        windows = [self.clock() - s.recency_hours * 3600, None]  # widen when the window is empty
        if max_age_hours is not None:  # a hard limit the caller asked for: never widened
            windows = [self.clock() - max_age_hours * 3600]
        for since in windows:
            hits = self._gather(profile, since, filters)
            if hits:
                break
        muted = set(profile.mutes)
        return [h for h in hits if h.article.subcategory not in muted]

    def _gather(self, profile: Profile, since: float | None, filters: dict) -> list[Hit]:
        s = self.settings
        n_explore = round(s.candidates * s.explore_share) if profile.query is not None else s.candidates // 2
        seen = set(profile.seen)
        if profile.query is not None:
            hits = self.articles.search(
                vector=profile.query, k=s.candidates - n_explore, since=since, exclude_ids=seen, **filters
            )
        else:
            popular = self.feedback.click_counts(self.clock() - 2 * s.half_life_hours * 3600)
            top = [a for a in sorted(popular, key=lambda a: (-popular[a], a)) if a not in seen][: s.candidates * 2]
            got = self.articles.get(top)
            hits = [
                got[a]
                for a in top
                if a in got
                and (since is None or got[a].article.published_at >= since)
                and _passes(got[a].article, filters)
            ][: s.candidates - n_explore]
        taken = seen | {h.article.id for h in hits}
        fresh = self.articles.recent(
            since=since if since is not None else 0.0,
            k=n_explore + s.candidates,
            exclude_ids=taken,
            **filters,
        )
        hits += fresh[: s.candidates - len(hits)]
        if profile.query is not None:  # similarity for the exploration picks too
            hits = [h if h.similarity is not None else _with_similarity(h, profile.query) for h in hits]
        return hits

    # -- relevance ----------------------------------------------------------------------------------------
    def relevance(self, profile_text: str, hits: Sequence[Hit], adapter: str | None) -> list[float]:
        articles = [h.article for h in hits]
        if self.settings.strategy == "listwise":
            return self._listwise(profile_text, articles, adapter)
        return self.backend.score(relevance_requests(self.backend, profile_text, articles, adapter))

    def popularity(self, hits: Sequence[Hit]) -> list[float]:
        """Recent clicks and likes, log-scaled to [0, 1] (the most popular = 1, never clicked = 0)."""
        counts = self.feedback.click_counts(self.clock() - 2 * self.settings.half_life_hours * 3600)
        logs = [math.log1p(counts.get(h.article.id, 0)) for h in hits]
        top = max(logs, default=0.0)
        return [v / top if top > 0 else 0.0 for v in logs]

    def _listwise(self, profile_text: str, articles: Sequence[Article], adapter: str | None) -> list[float]:
        def rank_window(indices: Sequence[int]) -> Permutation:
            user = prompts.render(
                LISTWISE, profile=profile_text, candidates=[candidate_text(articles[i]) for i in indices]
            )
            prompt = self.backend.chat_prompt(prompts.render(SYSTEM), user)
            text = self.backend.generate([GenerateRequest(prompt, LISTWISE_TOKENS, adapter)])[0].text
            return parse_permutation(text, len(indices))

        order, _ = listwise_rank(len(articles), rank_window, self.settings.listwise_window, self.settings.listwise_step)
        return rank_scores(order)

    # -- the whole loop -----------------------------------------------------------------------------------
    def recommend(self, request: FeedRequest) -> Feed:
        s = self.settings
        timings: dict[str, float] = {}
        started = tick = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal tick
            now = time.perf_counter()
            timings[name] = round(now - tick, 4)
            tick = now

        if self.articles.count() == 0:
            raise EmptyStore("the article store is empty: run `newsrank ingest FILE` (or `newsrank ingest --demo`)")
        try:
            adapter = self.use_adapter(request.adapter or s.adapter)
        except NotFound:
            if request.adapter:
                raise
            adapter = None  # the configured default is not trained yet: serve the base model
        now = self.clock()
        profile = self.profile(request.user_id)
        profile_text = profile.render(s.history_titles)
        lap("profile")
        hits = self.candidates(profile, request.categories, request.exclude_categories, request.max_age_hours)
        lap("candidates")
        popularity = self.popularity(hits)
        weights, degraded = s.weights.frozen(), []
        # a cold-start reader has no history to judge by: popularity is the relevance prior
        if profile.cold_start or not hits:
            relevance = popularity
        else:
            try:
                relevance = self.relevance(profile_text, hits, adapter)
            except Exception as exc:  # the feed goes on without the model: the other signals blend, renormalised
                if not model_failure(exc):
                    raise
                log.exception("scoring relevance failed; the feed is blended without it")
                relevance, weights = [0.0] * len(hits), without(weights, "relevance")
                degraded.append("relevance")
        lap("relevance")

        signals = [
            Signals(
                relevance=float(y),
                freshness=freshness((now - h.article.published_at) / 3600, s.half_life_hours),
                similarity=float(np.clip(h.similarity or 0.0, 0.0, 1.0)),
                affinity=profile.affinity(h.article),
                popularity=p,
            )
            for h, y, p in zip(hits, relevance, popularity, strict=True)
        ]
        embeddings = np.stack([h.embedding for h in hits]) if hits else np.zeros((0, 1))
        placed = blend_rank(signals, embeddings, weights, request.k)
        lap("blend")

        top = [hits[p.index] for p in placed]
        groundings = [explain.ground(profile, h.article, h.embedding) for h in top]
        explanations = {}
        if request.explain:
            articles = [h.article for h in top]
            try:
                explanations = explain.write(self.backend, articles, groundings, s.explain_top, adapter)
            except Exception as exc:  # the template says the same facts plainly
                if not model_failure(exc):
                    raise
                log.exception("writing explanations failed; the template explains instead")
                explanations = explain.templates(articles, groundings, s.explain_top)
                degraded.append("explanations")
        lap("explain")

        items = tuple(
            FeedItem(
                article=hit.article,
                record=RankedItem(
                    position=position,
                    article_id=hit.article.id,
                    title=hit.article.title,
                    score=p.score,
                    signals={**asdict(signals[p.index]), DIVERSITY.name: p.diversity},
                    age_hours=max(0.0, (now - hit.article.published_at) / 3600),
                    explanation=explanations.get(position, (None, None))[0],
                    explanation_source=explanations.get(position, (None, None))[1],
                    grounded_in=grounding.facts,
                ),
            )
            for position, (p, hit, grounding) in enumerate(zip(placed, top, groundings, strict=True), start=1)
        )
        record = RankingRecord(
            ranking_id=uuid.uuid4().hex,
            user_id=request.user_id,
            created_at=now,
            strategy="popularity" if profile.cold_start else s.strategy,
            prompt_version=PROMPT_VERSION,
            backend=self.backend.name,
            model=self.backend.model,
            adapter=None if profile.cold_start else adapter,
            weights=dict(weights),
            profile_text=profile_text,
            cold_start=profile.cold_start,
            items=tuple(i.record for i in items),
            degraded=tuple(degraded),
        )
        self.feedback.record_ranking(record)
        lap("record")
        timings["total"] = round(time.perf_counter() - started, 4)
        return Feed(
            record.ranking_id,
            request.user_id,
            profile.cold_start,
            items,
            profile_text,
            timings,
            record.adapter,
            record.degraded,
        )


def _with_similarity(hit: Hit, query: np.ndarray) -> Hit:
    return Hit(hit.article, hit.embedding, float(cosine_similarity(hit.embedding[None, :], query[None, :])[0, 0]))


def _passes(article: Article, filters: dict) -> bool:
    if filters.get("categories") and article.category not in filters["categories"]:
        return False
    return not (filters.get("exclude_categories") and article.category in filters["exclude_categories"])
