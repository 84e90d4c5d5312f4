"""Training examples: (profile, candidate, Yes/No) rendered with exactly the serving prompts.

Each example keeps the serving split into a shared prefix (system, profile, question) and the candidate's
suffix: `prefix + suffix` is byte for byte the prompt the ranker scores, and training reuses the prefix for
all candidates of one impression just as serving does.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from config.settings import Settings
from core.errors import InvalidInput, NotFound
from core.llm import Backend
from core.metrics import in_validation  # noqa: F401  (the split adapters use; re-exported)
from core.records import ENGAGEMENT, Event
from core.stores import ArticleStore, FeedbackStore
from feed.position import Propensities, ips_weights
from feed.profile import build_profile
from feed.stance import stance
from llm.relevance import relevance_requests

POSITIVE = ENGAGEMENT
NEGATIVE = {"impression", "skip", "dislike"}


@dataclass(frozen=True)
class Example:
    prefix: str
    suffix: str
    label: int  # 1: the reader engaged (Yes), 0: shown and passed over (No)
    group: str  # the split key and the ranking unit: a user, or an impression where users are unknown
    weight: float = 1.0  # in the loss: a click's inverse propensity of the place it was shown at (feed.position)

    @property
    def prompt(self) -> str:
        return self.prefix + self.suffix


def grouped(examples: Iterable[Example], key: Callable[[Example], str]) -> dict[str, list[Example]]:
    """Examples by a key (`group`: a reader; `prefix`: a prompt, one reader at one time), in first-seen order."""
    groups: dict[str, list[Example]] = defaultdict(list)
    for e in examples:
        groups[key(e)].append(e)
    return groups


def sample_negatives(examples: Sequence[Example], per_positive: int | None, seed: int) -> list[Example]:
    """Keep every positive and, per group, at most `per_positive` negatives for each positive (seeded)."""
    if per_positive is None:
        return list(examples)
    kept: list[Example] = []
    for group, items in grouped(examples, lambda e: e.group).items():
        positives = sum(e.label for e in items)
        negatives = [i for i, e in enumerate(items) if not e.label]
        rng = random.Random(f"{seed}:{group}")
        chosen = set(rng.sample(negatives, min(len(negatives), per_positive * max(positives, 1))))
        kept += [e for i, e in enumerate(items) if e.label or i in chosen]
    return kept


def from_mind(
    contexts: Iterable,
    backend: Backend,
    settings: Settings,
    pseudonym: Callable[[str], str],
    negatives: int | None = None,
    seed: int = 0,
) -> Iterator[Example]:
    """Examples from replayed MIND impressions (evaluation.replay.contexts): every clicked candidate and at most
    `negatives` unclicked ones per click, sampled within the impression (None: all), the group the reader's
    pseudonym (or the impression's id where the data names no reader)."""
    for ctx in contexts:
        profile_text = ctx.profile.render(settings.history_titles)
        requests = relevance_requests(
            backend, profile_text, [h.article for h in ctx.hits], text=settings.candidate_text
        )
        group = pseudonym(ctx.impression.user_id) if ctx.impression.user_id else ctx.impression.id
        own = [
            Example(r.prefix, r.suffix, label, ctx.impression.id) for r, label in zip(requests, ctx.labels, strict=True)
        ]
        for e in sample_negatives(own, negatives, seed):
            yield replace(e, group=group)


def from_feedback(
    feedback: FeedbackStore,
    articles: ArticleStore,
    backend: Backend,
    settings: Settings,
    since: float,
    pseudonym: Callable[[str], str],
    propensities: Propensities | None = None,
) -> Iterator[Example]:
    """Examples from reader events since a time. Each article a reader saw or touched is one example: Yes if
    they engaged with it (click, like, share, comment), No if it was only shown, skipped or disliked. Its profile
    is the reader as the ranker saw them: built from the events before the feed it was shown in was made (the
    feed its engagement names, else the first that names one), or before the article was first seen where no
    event names a stored feed. So a feed's items share one prompt however their events arrive, and the listwise
    objective orders its clicks against its other items. A reader is named by their pseudonym, and no example
    holds a time. With `propensities`, a Yes whose event names its feed weighs the inverse propensity of the
    place that feed showed it at (feed.position.ips_weights)."""
    feeds = Feeds(feedback)
    for user_id in feedback.user_ids(since):
        events = feedback.events(user_id)
        first_seen: dict[str, float] = {}
        shown_in: dict[str, str] = {}  # the first feed an event names for the article
        engaged_in: dict[str, str] = {}  # the first feed an engagement with it names
        kinds: dict[str, set[str]] = defaultdict(set)
        for e in events:
            if e.ts >= since and e.type in POSITIVE | NEGATIVE:
                first_seen.setdefault(e.article_id, e.ts)
                if e.ranking_id:
                    shown_in.setdefault(e.article_id, e.ranking_id)
                    if e.type in POSITIVE:
                        engaged_in.setdefault(e.article_id, e.ranking_id)
                # an angry comment is no engagement to learn from (feed/stance.py)
                against = e.type == "comment" and e.text is not None and stance(e.text) < 0
                kinds[e.article_id].add("dislike" if against else e.type)
        if not first_seen:
            continue
        known = articles.get(list({e.article_id for e in events}))
        preferences = feedback.preferences(user_id)
        feed_of = {**shown_in, **engaged_in}
        moments: dict[str, float] = {}
        for article_id, ts in first_seen.items():
            made = feeds.made_at(feed_of[article_id]) if article_id in feed_of else None
            moments[article_id] = ts if made is None else made
        profiles: dict[float, str] = {}  # by moment: a feed's items share one
        for article_id, seen_at in sorted(moments.items(), key=lambda kv: kv[1]):
            if article_id not in known:
                continue
            if seen_at not in profiles:
                before: list[Event] = [e for e in events if e.ts < seen_at]
                profiles[seen_at] = build_profile(
                    user_id, before, preferences, known, seen_at,
                    half_life_days=settings.interest_half_life_days, top_interests=settings.top_interests,
                ).render(settings.history_titles)  # fmt: skip
            [request] = relevance_requests(
                backend, profiles[seen_at], [known[article_id].article], text=settings.candidate_text
            )
            label = int(bool(kinds[article_id] & POSITIVE))
            weight = 1.0
            place = feeds.place(engaged_in[article_id], article_id) if article_id in engaged_in else None
            if propensities is not None and label and place is not None:
                [weight] = ips_weights([place], [label], propensities)
            yield Example(request.prefix, request.suffix, label, pseudonym(user_id), weight)


class Feeds:
    """The stored feeds events name: when each was made, and where it showed an article (its 1-based position),
    each read once. A feed gone past its retention has neither: its click counts unweighted, and its items are
    judged under the profile of when each was first seen."""

    def __init__(self, feedback: FeedbackStore) -> None:
        self.feedback = feedback
        self.known: dict[str, tuple[float, dict[str, int]] | None] = {}

    def _read(self, ranking_id: str) -> tuple[float, dict[str, int]] | None:
        if ranking_id not in self.known:
            try:
                record = self.feedback.ranking(ranking_id)
                self.known[ranking_id] = record.created_at, {i.article_id: i.position for i in record.items}
            except NotFound:
                self.known[ranking_id] = None
        return self.known[ranking_id]

    def made_at(self, ranking_id: str) -> float | None:
        found = self._read(ranking_id)
        return found[0] if found else None

    def place(self, ranking_id: str, article_id: str) -> int | None:
        found = self._read(ranking_id)
        return found[1].get(article_id) if found else None


def write_examples(path: Path, examples: Iterable[Example]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as out:
        for e in examples:
            out.write(json.dumps(asdict(e), ensure_ascii=False) + "\n")
            n += 1
    return n


def read_examples(path: Path) -> list[Example]:
    if not path.is_file():
        raise InvalidInput(f"no such file: {path}")
    examples = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            examples.append(Example(str(row["prefix"]), str(row["suffix"]), int(row["label"]), str(row["group"]),
                                    float(row.get("weight", 1.0))))  # fmt: skip
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise InvalidInput(f"{path}:{number}: not a training example ({exc})") from None
    return examples


def drop_group(path: Path, group: str) -> int:
    """Drop one group's rows (a reader erased) from an examples file, rewritten atomically; returns how many."""
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        try:
            mine = json.loads(line).get("group") == group
        except (json.JSONDecodeError, AttributeError):
            mine = False
        if mine:
            dropped += 1
        else:
            kept.append(line)
    if dropped:
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        tmp.replace(path)
    return dropped
