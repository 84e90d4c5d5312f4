"""The ranking loop: profile → candidates → LLM relevance → blend → explanations → stored record.

A feed is made in milliseconds from what the LLM computed ahead (feed/background_scorer.py): the cheap signals are
computed afresh for every request, the LLM's relevance is read from the feedback store (under the reader's
current profile: `llm`, an earlier one: `llm-stale`, or not yet: `none`, blended without it), explanations
come from the template at once and the LLM's rewrite later. A `fresh` request runs the LLM while it waits.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from config.experiment import Arm, Experiment
from config.settings import Settings
from core import metrics
from core.errors import EmptyStore, InvalidInput, NotFound, model_failure
from core.llm import Backend, GenerateRequest
from core.memo import Memo
from core.records import DIVERSITY, Article, BlendWeights, Hit, RankedItem, RankingRecord, ScoringTask, Signals
from core.stores import AdapterResolver, ArticleStore, FeedbackStore
from core.tally import Tally
from feed import explain, position, signals, tower_fit
from feed.blend import Placed, blend_rank, caps_over, cosine_similarity, without
from feed.exposure import ExposureTally
from feed.learned_ranker import Ranker, RankerRegistry
from feed.profile import Profile, build_profile
from llm import prompts
from llm.listwise import Permutation, listwise_rank, parse_permutation, rank_scores
from llm.relevance import LISTWISE, SYSTEM, listed, prompt_version, relevance_requests, scorer_key
from llm.tower import Tower

log = logging.getLogger("newsrank.ranking")

MAX_K = 100
MAX_QUERY = 200
SEARCH_WEIGHT = 1.0  # the query's match in a search's blend, beside the reader's own weights (about 1 together)
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
    fresh: bool = False  # run the LLM now (relevance and explanations) instead of reading what it computed ahead
    owner: str = ""  # the client (API key id) it is made for: recorded, and the owner of the work it asks for
    query: str | None = None  # a search (news on request): candidates found for it, its match in the blend

    def __post_init__(self) -> None:
        if not self.user_id or not self.user_id.strip():
            raise InvalidInput("user_id must not be empty")
        if not 1 <= self.k <= MAX_K:
            raise InvalidInput(f"k must be between 1 and {MAX_K}")
        if self.max_age_hours is not None and self.max_age_hours <= 0:
            raise InvalidInput("max_age_hours must be positive")
        if self.query is not None and not 1 <= len(self.query.strip()) <= MAX_QUERY:
            raise InvalidInput(f"a search query has 1-{MAX_QUERY} characters")


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
    rescore: bool = False  # some relevance was missing or stale: the reader's rescoring was asked for
    arm: str | None = None  # the experiment arm it was made in


@dataclass(frozen=True)
class Standings:
    """A reader's candidates as they stand now (Recommender.rank): everything a feed is made of, nothing stored
    yet. `placed` is the blend's order of the top k; `signals`, `sources` and `hits` are per candidate."""

    request: FeedRequest
    profile: Profile
    profile_text: str
    hits: list[Hit]
    signals: list[Signals]
    sources: list[str]  # where each relevance came from: llm, llm-stale, none or popularity
    weights: BlendWeights
    placed: list[Placed]
    adapter: str | None
    arm: str | None
    strategy: str
    degraded: tuple[str, ...]
    fresh: bool  # the LLM scored the candidates now: their relevance is kept when the feed is published
    now: float
    timings: dict[str, float]


def profile_key(profile_text: str) -> str:
    """The profile a relevance was computed under, as a short digest of its text."""
    return hashlib.sha256(profile_text.encode()).hexdigest()[:16]


class Recommender:
    def __init__(
        self,
        articles: ArticleStore,
        feedback: FeedbackStore,
        backend: Backend,
        settings: Settings,
        clock: Callable[[], float] = time.time,
        adapters: AdapterResolver | None = None,
        tally: Tally | None = None,
        pseudonym: Callable[[str], str] | None = None,
        tower: Tower | None = None,
    ) -> None:
        self.articles = articles
        self.tower = tower  # the LLM's match of readers and articles (llm/tower.py), if one is served
        self.feedback = feedback
        self.backend = backend
        self.settings = settings
        self.clock = clock
        self.adapters = adapters
        self.tally = tally or Tally()
        self.exposure = ExposureTally()
        self.pseudonym = pseudonym or (lambda user_id: user_id)  # what an experiment splits readers by
        self.random = random.Random()  # which feeds explore positions (feed.position)
        self.running_experiment: Callable[[], Experiment | None] = lambda: None  # the learning loop's, if it runs
        self.scoring_asked = threading.Event()  # set when work is queued: a worker in this process wakes at once
        self._interest_vectors: dict[str, np.ndarray] = {}
        self._loaded: dict[str, tuple[tuple[str, int | None], Any]] = {}  # rankers and towers, by file stamp
        reuse = settings.behaviour_cache_seconds
        self._clicks: Memo[str, dict[str, int]] = Memo(reuse)
        self._places: Memo[str, dict[int, int]] = Memo(reuse)
        self._rescoring_asked: Memo[str, bool] = Memo(reuse)
        self._coclick_index: tuple[float, signals.CoClicks | None] = (0.0, None)
        self._coclick_lock = threading.Lock()
        self._coclick_refreshing = False

    def use_adapter(self, reference: str | None) -> str | None:
        """The backend's name for the adapter a request names ("clicks" = its active version, "clicks@3" = that
        version), loading it on first use. A newly activated version is picked up on the next request."""
        if reference is None or self.adapters is None:
            return reference
        version = self.adapters.resolve(reference)
        if version.key not in self.backend.adapters:
            self.backend.load_adapter(version.key, str(version.path))
        return version.key

    def default_adapter(self, requested: str | None = None) -> str | None:
        """The adapter a request is served with: the one it names, else the configured one (the base model while
        that is not trained yet)."""
        try:
            return self.use_adapter(requested or self.settings.adapter)
        except NotFound:
            if requested:
                raise
            return None

    def experiment(self) -> Experiment | None:
        """The experiment running now: the operator's (NEWSRANK_EXPERIMENT), else the learning loop's A/B test of a
        candidate adapter (serve/learning.py), if any."""
        return self.settings.experiment or self.running_experiment()

    def arm(self, user_id: str) -> tuple[str, Arm] | None:
        """The experiment arm a reader is in, if an experiment runs."""
        experiment = self.experiment()
        if experiment is None:
            return None
        name = experiment.arm_of(self.pseudonym(user_id))
        return name, experiment.arms[name]

    def adapter_for(self, user_id: str, requested: str | None = None) -> str | None:
        """The adapter a reader's feed is scored with: the one the request names, else their arm's, else the
        configured one."""
        arm = self.arm(user_id)
        return self.default_adapter(requested or (arm[1].adapter if arm else None))

    def learned_ranker(self, reference: str | None = None) -> tuple[str, Ranker] | None:
        """The learned ranker a reference names (default NEWSRANK_RANKER: a registered NAME[@VERSION] or a JSON file;
        "none", or a name not fitted yet: the hand-set weights), read again when its file changes: a ranker
        activated on any instance is used on the next feed."""
        reference = reference or self.settings.ranker
        if not reference or reference == "none":
            return None
        if reference.endswith(".json"):
            key, path = Path(reference).stem, Path(reference)
        elif found := RankerRegistry(self.settings.adapters_path / "rankers").find(reference):
            key, path = found
        else:
            return None  # a name not fitted yet: the hand-set weights until it is (as with adapters)
        return key, self._load(f"ranker:{reference}", key, path, Ranker.load)

    def served_tower(self) -> Tower | None:
        return self._served_tower()[1]

    def _served_tower(self) -> tuple[str | None, Tower | None]:
        """The tower NEWSRANK_TOWER names, with its registered NAME@VERSION (None for the shipped one or a file). A
        registered name's active version is read again when it changes (a tower activated on any instance is
        served on the next feed); before its first version, the one the service started with."""
        reference = self.settings.tower
        if self.tower is None or not reference or tower_fit.is_file_reference(reference):
            return None, self.tower
        found = tower_fit.registry_of(self.settings.adapters_path).find(reference)
        if found is None:
            return None, self.tower
        return found[0], self._load(f"tower:{reference}", *found, Tower.load)

    def _load(self, slot: str, key: str, path: Path, load: Callable[[Path], Any]) -> Any:
        """A model file, loaded again only when its version or its file changes."""
        stamp = (key, path.stat().st_mtime_ns if path.is_file() else None)
        cached = self._loaded.get(slot)
        if cached is None or cached[0] != stamp:
            self._loaded[slot] = cached = (stamp, load(path))
        return cached[1]

    def scorer(self, adapter: str | None) -> str:
        """What a relevance score is only comparable under: model, adapter, prompts and strategy."""
        return scorer_key(self.backend.model, adapter, self.settings.candidate_text, self.settings.strategy)

    # -- profile ------------------------------------------------------------------------------------------
    def profile(self, user_id: str, without: frozenset[str] = frozenset()) -> Profile:
        """The reader's profile now; `without`: as if they had never touched those articles (what-if)."""
        s = self.settings
        # the most recent events only: a reader with a huge history costs a request no more than a bounded one
        events = [e for e in self.feedback.events(user_id, limit=s.history_events_max) if e.article_id not in without]
        prefs = self.feedback.preferences(user_id)
        return build_profile(
            user_id,
            events,
            prefs,
            self.articles.get([e.article_id for e in events]),
            self.clock(),
            half_life_days=s.interest_half_life_days,
            top_interests=s.top_interests,
            explicit_vector=self._interest_vector(prefs.interests) if prefs.interests else None,
        )

    def _interest_vector(self, interests: Sequence[str]) -> np.ndarray:
        text = ", ".join(interests)
        vector = self._interest_vectors.get(text)
        if vector is None:  # few distinct lists, asked for on every feed: embed each once
            if len(self._interest_vectors) >= 10_000:
                self._interest_vectors.clear()
            vector = self._interest_vectors[text] = self.articles.embedder.encode([text])[0]
        return vector

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
        hits += self.followed(profile, windows[0], hits)  # a followed story's new articles are candidates too
        return [h for h in hits if h.article.subcategory not in muted and h.article.category not in muted]

    def search_candidates(self, profile: Profile, query: str) -> tuple[list[Hit], list[float]]:
        """News on request: the articles nearest to a query's embedding and those whose words best match it (BM25:
        names and numbers), unmuted, from any time; and each one's match, half its cosine to the query and half
        its keyword score over the best one's."""
        s = self.settings
        vector = self.articles.embedder.encode([query])[0]
        nearest = self.articles.search(vector=vector, k=2 * s.candidates,
                                       exclude_categories=list(profile.mutes) or None)  # fmt: skip
        keywords = dict(self.articles.keyword_search(query, 2 * s.candidates))
        found = {h.article.id: h for h in nearest}
        found.update((i, h) for i, h in self.articles.get([i for i in keywords if i not in found]).items())
        muted = set(profile.mutes)
        hits = [h for h in found.values() if h.article.category not in muted and h.article.subcategory not in muted]
        top = max(keywords.values(), default=0.0)
        cosines = cosine_similarity(np.stack([h.embedding for h in hits]), vector[None, :])[:, 0] if hits else []
        match = [0.5 * max(float(c), 0.0) + 0.5 * (keywords.get(h.article.id, 0.0) / top if top else 0.0)
                 for h, c in zip(hits, cosines, strict=True)]  # fmt: skip
        return hits, match

    def followed(self, profile: Profile, since: float | None, hits: Sequence[Hit]) -> list[Hit]:
        """The unseen articles of the stories the reader follows, from the window, that are not candidates yet."""
        taken = set(profile.seen) | {h.article.id for h in hits}
        found = [h for story in profile.follows for h in self.articles.story(story)
                 if h.article.id not in taken and (since is None or h.article.published_at >= since)]  # fmt: skip
        return list({h.article.id: h for h in found}.values())

    def _gather(self, profile: Profile, since: float | None, filters: dict) -> list[Hit]:
        s = self.settings
        n_explore = round(s.candidates * s.explore_share) if profile.query is not None else s.candidates // 2
        seen = set(profile.seen)
        if profile.query is not None:
            hits = self.articles.search(
                vector=profile.query, k=s.candidates - n_explore, since=since, exclude_ids=seen, **filters
            )
        else:
            popular = self.recent_clicks()
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
        return hits

    # -- relevance ----------------------------------------------------------------------------------------
    def relevance(self, profile_text: str, hits: Sequence[Hit], adapter: str | None) -> list[float]:
        """The LLM's relevance of each candidate, computed now."""
        articles = [h.article for h in hits]
        if self.settings.strategy == "listwise":
            return self._listwise(profile_text, articles, adapter)
        return self.backend.score(
            relevance_requests(self.backend, profile_text, articles, adapter, self.settings.candidate_text)
        )

    def cached_relevance(
        self, user_id: str, profile_text: str, hits: Sequence[Hit], adapter: str | None
    ) -> tuple[list[float | None], list[str]]:
        """The relevance the background scorer computed for each candidate, and where it came from: `llm`
        (under this profile), `llm-stale` (under an earlier one) or `none` (never scored: None)."""
        scorer, key = self.scorer(adapter), profile_key(profile_text)
        cached = self.feedback.cached_relevance(user_id, scorer, [h.article.id for h in hits])
        found = [cached.get(h.article.id) for h in hits]
        sources = ["none" if c is None else "llm" if c.profile_key == key else "llm-stale" for c in found]
        scores = [None if c is None else c.score for c in found]
        lacking = {h.article.id: i for i, (h, source) in enumerate(zip(hits, sources, strict=True)) if source != "llm"}
        for article_id, score in self.shared(scorer, key, list(lacking)).items():
            scores[lacking[article_id]], sources[lacking[article_id]] = score, "llm"
        return scores, sources

    def shared(self, scorer: str, key: str, article_ids: Sequence[str]) -> dict[str, float]:
        """Scores that readers with this very profile got (`shared_scores`; pointwise scores only: a listwise one
        depends on the other candidates too)."""
        s = self.settings
        if not (s.shared_scores and s.strategy == "pointwise" and article_ids):
            return {}
        return self.feedback.shared_relevance(scorer, key, article_ids, self.clock() - s.score_ttl_seconds)

    def precompute(self, user_id: str, adapter: str | None = None, stale_later: ScoringTask | None = None) -> int:
        """Score a reader's candidates with the LLM under their current profile and keep the scores for the
        requests to come (what the background scorer runs). Candidates scored under this very profile within
        the TTL are not scored again (pointwise scores do not depend on the other candidates; listwise ones do).
        Nor are those that readers with this very profile were scored on (their scores are kept as this reader's).
        With `stale_later`, those scored under an earlier profile within the TTL keep their score for now, and
        that task is asked for to rescore them. Returns how many were scored."""
        s = self.settings
        profile = self.profile(user_id)
        if profile.cold_start:
            return 0  # nothing to judge by: such a reader's feed takes popularity as its relevance
        hits = self.candidates(profile)
        profile_text = profile.render(s.history_titles)
        if s.strategy == "pointwise":
            scorer = self.scorer(adapter)
            cached = self.feedback.cached_relevance(user_id, scorer, [h.article.id for h in hits])
            key, since = profile_key(profile_text), self.clock() - s.score_ttl_seconds
            recent = {a for a, c in cached.items() if c.scored_at >= since}
            current = {a for a in recent if cached[a].profile_key == key}
            shared = self.shared(scorer, key, [h.article.id for h in hits if h.article.id not in current])
            if shared:  # readers with this very profile were scored on them: their scores, not the LLM again
                self.feedback.store_relevance(user_id, scorer, key, shared, self.clock())
                self.tally.add("scores_shared", len(shared))
                current |= set(shared)
            if stale_later is not None and recent - current:
                self.ask_scoring([stale_later])
                current |= recent
            hits = [h for h in hits if h.article.id not in current]
        if not hits:
            return 0
        if s.strategy == "listwise":  # a permutation of all of them at once
            self.keep_relevance(user_id, profile_text, hits, self.relevance(profile_text, hits, adapter), adapter)
            return len(hits)
        # what matters first: the candidates that can reach the top of the feed on their other signals are scored
        # (and kept, for the next feed) before the rest
        for part in self.by_promise(profile, hits):
            self.keep_relevance(user_id, profile_text, part, self.relevance(profile_text, part, adapter), adapter)
        return len(hits)

    def by_promise(self, profile: Profile, hits: Sequence[Hit]) -> list[list[Hit]]:
        """The candidates in parts of `rescore_first`, best first by their blend without the LLM's relevance."""
        s = self.settings
        popular, ctr, coclick = self.behaviour(profile, hits)
        found = signals.candidate_signals(profile, hits, [None] * len(hits), popular, self.clock(), s.half_life_hours,
                                          ctr, coclick, profile.follows)  # fmt: skip
        weights = without(s.weights.frozen(), "relevance")
        score = [sum(weights[n] * getattr(f, n) for n in weights if n != DIVERSITY.name) for f in found]
        ordered = [hits[i] for i in sorted(range(len(hits)), key=lambda i: (-score[i], i))]
        size = s.rescore_first
        return [ordered[i : i + size] for i in range(0, len(ordered), size)]

    def keep_relevance(
        self, user_id: str, profile_text: str, hits: Sequence[Hit], scores: Sequence[float], adapter: str | None
    ) -> None:
        self.feedback.store_relevance(
            user_id,
            self.scorer(adapter),
            profile_key(profile_text),
            {h.article.id: float(y) for h, y in zip(hits, scores, strict=True)},
            self.clock(),
        )
        self.tally.add("scores_written", len(hits))

    def ask_scoring(self, tasks: Sequence[ScoringTask], again: bool = True) -> None:
        """Queue background work (coalesced per reader or ranking; the lowest priority dropped past the bound).
        `again`: a task running now runs once more (what it works from changed meanwhile)."""
        dropped = self.feedback.request_scoring(tasks, self.clock(), self.settings.scoring_queue_max, again)
        self.tally.add("scoring_dropped", dropped)
        self.scoring_asked.set()

    def active_readers(self) -> dict[str, float]:
        """Readers with a profile to score, active within `scoring_active_hours`, with when they last were."""
        return self.feedback.active_readers(self.clock() - self.settings.scoring_active_hours * 3600)

    def articles_arrived(self) -> int:
        """New articles are candidates nobody's scores cover yet: ask for every active reader's rescoring."""
        active = self.active_readers()
        if active:
            self.ask_scoring([ScoringTask("reader", u, t) for u, t in active.items()])
        return len(active)

    def recent_clicks(self) -> dict[str, int]:
        """Clicks and likes per article over the last two freshness half-lives (feed.signals.popularity)."""
        since = self.behaviour_since()
        return self._clicks.one("all", lambda: self.feedback.click_counts(since))

    def behaviour_since(self) -> float:
        """The start of the window readers' behaviour is counted over: two freshness half-lives."""
        return self.clock() - 2 * self.settings.half_life_hours * 3600

    def behaviour(self, profile: Profile, hits: Sequence[Hit]) -> tuple[list[float], list[float], list[float]]:
        """What readers' behaviour says of each candidate: popularity, click-through rate and co-clicks."""
        clicks, since = self.recent_clicks(), self.behaviour_since()
        places = self._places.many([h.article.id for h in hits], lambda ids: self.feedback.shown_places(ids, since), {})
        shows = {a: position.examined(p) for a, p in places.items()}
        history = [h.article_id for h in profile.history]
        coclick = self.coclicks().scores(history, hits, profile.user_id)
        return signals.popularity(clicks, hits), signals.click_through(clicks, shows, hits), coclick

    def coclicks(self) -> signals.CoClicks:
        """The co-click index of the last `coclick_window_hours`: built at first use, then rebuilt in the background
        when older than `coclick_refresh_seconds` (feeds use the one there is meanwhile)."""
        with self._coclick_lock:
            built, index = self._coclick_index
            stale = time.monotonic() - built > self.settings.coclick_refresh_seconds
            if index is None:
                index = self.refresh_coclicks()
            elif stale and not self._coclick_refreshing:
                self._coclick_refreshing = True
                threading.Thread(target=self.refresh_coclicks, daemon=True, name="coclicks").start()
            return index

    def refresh_coclicks(self) -> signals.CoClicks:
        s = self.settings
        try:
            pairs = self.feedback.engagements(self.clock() - s.coclick_window_hours * 3600, s.coclick_max_pairs)
            index = signals.CoClicks(pairs, s.coclick_max_pairs)
            self._coclick_index = (time.monotonic(), index)
            return index
        finally:
            self._coclick_refreshing = False

    def _listwise(self, profile_text: str, articles: Sequence[Article], adapter: str | None) -> list[float]:
        def rank_window(indices: Sequence[int]) -> Permutation:
            user = prompts.render(LISTWISE, profile=profile_text, candidates=[listed(articles[i]) for i in indices])
            prompt = self.backend.chat_prompt(prompts.render(SYSTEM), user)
            text = self.backend.generate([GenerateRequest(prompt, LISTWISE_TOKENS, adapter)])[0].text
            return parse_permutation(text, len(indices))

        order, _ = listwise_rank(len(articles), rank_window, self.settings.listwise_window, self.settings.listwise_step)
        return rank_scores(order)

    # -- the whole loop: rank (no side effect), then publish (explain, record, ask for work) ---------------------
    def rank(self, request: FeedRequest) -> Standings:
        """Where the reader's candidates stand now: profile, candidates, relevance, signals and the blend's order
        of the top `request.k`. Stores nothing and asks for nothing (chat's "why don't I see more X?" looks here);
        a `fresh` request runs the LLM now, and `publish` keeps what it computed."""
        s = self.settings
        timings: dict[str, float] = {}
        tick = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal tick
            now = time.perf_counter()
            timings[name] = round(now - tick, 4)
            tick = now

        if self.articles.count() == 0:
            raise EmptyStore("the article store is empty: run `newsrank ingest FILE` (or `newsrank ingest --demo`)")
        arm = self.arm(request.user_id)
        if arm is not None and request.adapter and request.adapter != arm[1].adapter:
            arm = None  # served another adapter than its arm's (an operator's look): counted in no arm
        adapter = self.adapter_for(request.user_id, request.adapter)
        now = self.clock()
        profile = self.profile(request.user_id)
        profile_text = profile.render(s.history_titles)
        lap("profile")
        if request.query:
            hits, match = self.search_candidates(profile, request.query)
        else:
            hits = self.candidates(profile, request.categories, request.exclude_categories, request.max_age_hours)
        lap("candidates")
        popular, ctr, coclick = self.behaviour(profile, hits)
        weights, degraded, strategy = s.weights.frozen(), [], s.strategy
        if arm is not None:
            weights = BlendWeights(**{**weights, **arm[1].weights})
        learned = None if profile.cold_start else self.learned_ranker(arm[1].ranker if arm else None)
        if learned is not None:  # the reader's own weights, from the ranker fitted on clicks
            key, ranker = learned
            weights = BlendWeights(**ranker.weights(profile.engaged, self.scorer(adapter), weights))
            strategy = f"{s.strategy}+ranker:{key}"
        fresh = False
        # a cold-start reader has no history to judge by: popularity is the relevance prior
        if profile.cold_start or not hits:
            relevance, sources = list(popular), ["popularity"] * len(hits)
        elif request.fresh:
            try:
                relevance, sources, fresh = self.relevance(profile_text, hits, adapter), ["llm"] * len(hits), True
            except Exception as exc:  # the feed goes on without the model: the other signals blend, renormalised
                if not model_failure(exc):
                    raise
                log.exception("scoring relevance failed; the feed is blended without it")
                relevance, sources, weights = [None] * len(hits), ["none"] * len(hits), without(weights, "relevance")
                degraded.append("relevance")
        else:
            relevance, sources = self.cached_relevance(request.user_id, profile_text, hits, adapter)
        lap("relevance")

        tower_key, tower = self._served_tower()
        if tower_key is not None:  # the record says which of the platform's own towers gave the match
            strategy = f"{strategy}+tower:{tower_key}"
        found = signals.candidate_signals(profile, hits, relevance, popular, now, s.half_life_hours, ctr, coclick,
                                          profile.follows, match if request.query else None,
                                          signals.tower_match(tower, profile, hits))  # fmt: skip
        if request.query:  # the reader's own blend, the query's match in it
            weights, strategy = BlendWeights(**{**weights, "query": SEARCH_WEIGHT}), f"search+{strategy}"
        embeddings = np.stack([h.embedding for h in hits]) if hits else np.zeros((0, 1))
        lacking = without(weights, "relevance")  # a candidate not scored yet is blended on its other signals
        usual = profile.top_categories()
        caps = caps_over([h.article for h in hits], usual, s.exposure_caps)
        each = [lacking if y is None else weights for y in relevance]
        stories = [h.article.story or h.article.id for h in hits]
        placed = blend_rank(found, embeddings, each, request.k, caps, stories)
        placed = [p for n, p in enumerate(placed) if stories[p.index] not in {stories[q.index] for q in placed[:n]}]
        lap("blend")
        return Standings(request, profile, profile_text, hits, found, sources, weights, placed, adapter,
                         arm[0] if arm else None, strategy, tuple(degraded), fresh, now, timings)  # fmt: skip

    def publish(self, standings: Standings) -> Feed:
        """The feed of these standings, shown: a share of feeds explores positions, the top items are explained,
        the ranking record is stored, and the background work it calls for is asked for."""
        s, st, request = self.settings, standings, standings.request
        timings, tick = dict(st.timings), time.perf_counter()
        user_id, hits, degraded = request.user_id, st.hits, list(st.degraded)
        if st.fresh:
            self.keep_relevance(user_id, st.profile_text, hits, [x.relevance for x in st.signals], st.adapter)
        rescore = not request.fresh and any(source in ("none", "llm-stale") for source in st.sources)
        if rescore and not self._rescoring_asked.lately(user_id):  # asked already: the queue holds it
            self.ask_scoring([ScoringTask("reader", user_id, st.now, owner=request.owner)])
        for source in st.sources:
            self.tally.add("feed_relevance", source=source)
        for p in st.placed:
            if p.moved_by:
                self.tally.add("feed_capped", cap=p.moved_by)
        # a small share of feeds swap two neighbours at random: what position bias is measured by
        explored, swap = position.explore(len(st.placed), s.position_explore_share, self.random,
                                          s.position_explore_depth)  # fmt: skip
        placed = position.swapped(st.placed, explored, swap)

        top = [hits[p.index] for p in placed]
        groundings = explain.groundings(st.profile, top, [st.signals[p.index] for p in placed], st.weights,
                                        s.history_titles, request.query)  # fmt: skip
        explanations, rewrite = {}, False
        if request.explain:
            articles = [h.article for h in top]
            if request.fresh:
                try:
                    explanations = explain.write(self.backend, articles, groundings, s.explain_top, st.adapter)
                except Exception as exc:  # the template says the same facts plainly
                    if not model_failure(exc):
                        raise
                    log.exception("writing explanations failed; the template explains instead")
                    degraded.append("explanations")
            if not explanations:  # the template at once; the LLM's rewrite of it later, on the record
                explanations = explain.templates(articles, groundings, s.explain_top)
                rewrite = not request.fresh and any(g.facts for g in groundings[: s.explain_top])
        tick = _lap(timings, "explain", tick)

        now, cold = st.now, st.profile.cold_start
        sizes = self.articles.story_sizes([h.article.story or h.article.id for h in top])
        chosen = [copies_passed(st, p.index) for p in placed]
        items = tuple(
            FeedItem(
                article=hit.article,
                record=RankedItem(
                    position=position,
                    article_id=hit.article.id,
                    title=hit.article.title,
                    score=p.score,
                    signals={**asdict(st.signals[p.index]), DIVERSITY.name: p.diversity},
                    age_hours=max(0.0, (now - hit.article.published_at) / 3600),
                    explanation=explanations.get(position, (None, None))[0],
                    explanation_source=explanations.get(position, (None, None))[1],
                    grounded_in=grounding.facts,
                    relevance_source=st.sources[p.index],
                    category=hit.article.category,
                    source=hit.article.source,
                    moved_by=p.moved_by,
                    story=hit.article.story or hit.article.id,
                    copies=sizes.get(hit.article.story or hit.article.id, 1),
                    chosen_over=over,
                    chosen_for=why,
                ),
            )
            for position, (p, hit, grounding, (over, why)) in enumerate(
                zip(placed, top, groundings, chosen, strict=True), start=1
            )
        )
        record = RankingRecord(
            ranking_id=uuid.uuid4().hex,
            user_id=user_id,
            created_at=now,
            strategy="popularity" if cold else st.strategy,
            prompt_version=prompt_version(s.candidate_text),
            backend=self.backend.name,
            model=self.backend.model,
            adapter=None if cold else st.adapter,
            weights=dict(st.weights),
            profile_text=st.profile_text,
            cold_start=cold,
            items=tuple(i.record for i in items),
            degraded=tuple(degraded),
            arm=st.arm,
            explored_pair=explored,
            intra_list_distance=metrics.intra_list_distance(np.stack([h.embedding for h in top])) if top else None,
            experiment=self.experiment().name if st.arm and self.experiment() else None,
            owner=request.owner or None,
        )
        stored = self.feedback.record_ranking(record)  # False: the reader was erased meanwhile
        self.exposure.add([h.article for h in hits], [h.article for h in top], st.profile.top_categories())
        if rewrite and stored:  # one rewrite per reader waits at a time: of their latest ranking, the one they see
            self.ask_scoring([ScoringTask("explain", user_id, now, owner=request.owner)])
        _lap(timings, "record", tick)
        timings["total"] = round(sum(timings.values()), 4)
        return Feed(record.ranking_id, user_id, cold, items, st.profile_text, timings, record.adapter,
                    record.degraded, rescore, record.arm)  # fmt: skip

    def recommend(self, request: FeedRequest) -> Feed:
        """The feed for a request, explained and recorded."""
        return self.publish(self.rank(request))


def copies_passed(standings: Standings, index: int) -> tuple[tuple[str, ...], str]:
    """The other copies of a placed candidate's story among the candidates (one slot per story: it beat them),
    and why: the term of the blend that put it furthest ahead of the best of them."""
    hits, story = standings.hits, standings.hits[index].article.story or standings.hits[index].article.id
    others = [i for i, h in enumerate(hits) if i != index and (h.article.story or h.article.id) == story]
    if not others:
        return (), ""
    w, mine = standings.weights, standings.signals[index]
    rival = max(others, key=lambda i: sum(w[n] * getattr(standings.signals[i], n) for n in asdict(mine)))
    ahead = {n: w[n] * (getattr(mine, n) - getattr(standings.signals[rival], n)) for n in asdict(mine)}
    name = max(ahead, key=lambda n: ahead[n])
    return tuple(hits[i].article.id for i in others), f"{name}: {getattr(mine, name):.2f} against " + (
        f"{getattr(standings.signals[rival], name):.2f}"
    )


def _lap(timings: dict[str, float], name: str, since: float) -> float:
    now = time.perf_counter()
    timings[name] = round(now - since, 4)
    return now


def _passes(article: Article, filters: dict) -> bool:
    if filters.get("categories") and article.category not in filters["categories"]:
        return False
    return not (filters.get("exclude_categories") and article.category in filters["exclude_categories"])
