"""Chat about a recommendation: "why was this recommended?", "why is A above B?", "why don't I see more X?",
"what if I hadn't read that?", "show me less like this", "more about X", "undo that".

Every answer is computed from the stored ranking record (the signals and profile facts the ranker used), the
reader's profile and the articles there are, never guessed: comparisons from the two items' signals,
counterfactuals by blending the record's items again. Requests to see less or more change the reader's explicit
preferences, so the next feed differs; rules, not the model, recognise them. The LLM may phrase a "why", but its
text is untrusted: it is shown only if `judge` finds it faithful to the record; otherwise the reader gets the
answer written from the record.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from core.errors import InvalidInput, NotFound, model_failure
from core.llm import Backend, GenerateRequest
from core.records import BLEND, SIGNALS, Article, BlendWeights, Preferences, RankedItem, RankingRecord, Signals
from core.stores import ArticleStore, FeedbackStore
from feed import explain
from feed.blend import blend_rank, cosine_similarity, without
from feed.profile import Profile
from llm import guard, prompts

CHAT = "chat.v1"
CHAT_TOKENS = 48
MAX_MESSAGES = 20
MAX_MESSAGE_CHARS = 2000
HISTORY_TURNS = 4  # earlier turns shown to the model: enough for "and the second one?", short enough for 2 cores
TURN_CHARS = 300  # of each turn shown to the model: a long one costs the prompt no more than this
MAX_CHAT_CHARS = 6000  # a request's messages together (Settings.chat_chars_max)

LESS = re.compile(r"\b(less like (this|that|it)|fewer like|not interested|no more (of )?(this|these)|stop showing)\b")
MORE_LIKE = re.compile(r"\bmore (like|of) (this|that|these|it)\b")
MORE = re.compile(r"\bmore (about|on|of)\s+(?P<topic>[\w][\w &'-]{1,40}?)\s*[.!?]*$")
ABOVE = re.compile(r"\bwhy\b.*\b(above|ahead of|higher than|before|ranked over|rank(?:ed)? higher than|better than)\b")
WHY_NOT = re.compile(
    r"\bwhy (?:(?:don'?t|do not|didn'?t|did not|can'?t|cannot) i (?:see|get|read)|(?:are|is) there (?:no|not)|"
    r"aren'?t there|no|not) (?:more |any )?(?:about |on )?(?P<topic>[\w &'-]{2,40}?)"
    r"(?: articles| news| stories| items)?(?: in my feed| here)?\s*[?.!]*$"
)
ORDINALS = {"top": 1, "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7,
            "eighth": 8, "ninth": 9, "tenth": 10}  # fmt: skip
REFERENCE = re.compile(r"(?:#|number |no\. ?)(?P<n>\d{1,3})\b|\bthe (?P<ordinal>" + "|".join(ORDINALS) + r")\b")
WHAT_IF = re.compile(r"\bwhat if\b|\bwhat would (?:happen|change)\b|\bwithout\b|\bif i (?:had not|hadn'?t|never)\b")
FOLLOW = re.compile(
    r"\bfollow (?:this|that|the|this news) stor(?:y|ies)\b|\bkeep me (?:posted|updated)\b|\bfollow (?:it|this|that)\b"
)
UNFOLLOW = re.compile(r"\b(?:unfollow|stop following|don'?t follow)\b")
SEARCH = re.compile(
    r"\b(?:find|search(?: for)?|look (?:for|up)|show|get|any)(?: me)?(?: some| the latest| recent| new)?"
    r"(?: news| articles| stories)?\s+(?:about|on|for|with)\s+(?P<topic>[\w &'.,-]{2,80}?)\s*[?.!]*$"
)
UNDO = re.compile(r"\bundo\b|\btake (?:that|it) back\b|\brevert\b|\bnever ?mind\b|\bcancel that\b")
WAS_INTEREST, WAS_MUTED = "It was one of your interests until now.", "It was muted until now."
REASONS = {spec.name: spec.reason for spec in BLEND}  # each term of the blend's reason, in the reader's words
NAMED = {spec.name: spec.named for spec in BLEND}  # how a reader may name each term ("what if it were less popular?")
SAYING = {spec.name: spec.says for spec in BLEND}  # words that state each reason: a phrased answer must use one

Role = Literal["user", "assistant"]
log = logging.getLogger("newsrank.chat")


@dataclass(frozen=True)
class Message:
    role: Role
    content: str


@dataclass(frozen=True)
class Reply:
    text: str
    source: str  # "llm" or "record"
    intent: str  # "why", "less" or "more"
    ranking_id: str
    article_id: str
    title: str
    facts: dict[str, object] = field(default_factory=dict)
    preferences: Preferences | None = None  # the reader's preferences after a "less" or "more" request
    degraded: bool = False  # the model failed: the answer comes from the record alone
    allowed: tuple[str, ...] = ()  # what a phrased answer may speak of (faithful)
    main_signal: str = ""  # the reason a phrased answer must state


def check_messages(messages: Sequence[Message], max_chars: int = MAX_CHAT_CHARS) -> None:
    if not messages or messages[-1].role != "user":
        raise InvalidInput("messages must end with the user's question")
    if len(messages) > MAX_MESSAGES:
        raise InvalidInput(f"at most {MAX_MESSAGES} messages per request")
    for m in messages:
        if m.role not in ("user", "assistant") or not m.content.strip() or len(m.content) > MAX_MESSAGE_CHARS:
            raise InvalidInput(f"each message needs role user|assistant and 1-{MAX_MESSAGE_CHARS} characters")
    if sum(len(m.content) for m in messages) > max_chars:
        raise InvalidInput(f"at most {max_chars} characters in one request's messages, all turns together")


def intent_of(question: str) -> tuple[str, str | None]:
    """("undo", None) to revert the conversation's last preference change, ("above", None) for a comparison
    of two items, ("what-if", None), ("why-not", topic), ("less", None), ("more", topic),
    ("more", None) for more like the item, or ("why", None): rules, not the model, decide what changes a
    profile."""
    text = " ".join(question.lower().split())
    if UNDO.search(text):
        return "undo", None
    if WHAT_IF.search(text):
        return "what-if", None
    if ABOVE.search(text):
        return "above", None
    why_not = WHY_NOT.search(text)
    if why_not:
        return "why-not", why_not.group("topic").strip()
    if UNFOLLOW.search(text):
        return "unfollow", None
    if FOLLOW.search(text):
        return "follow", None
    search = SEARCH.search(text)
    if search:
        return "search", search.group("topic").strip()
    if LESS.search(text):
        return "less", None
    if MORE_LIKE.search(text):
        return "more", None
    more = MORE.search(text)
    if more:
        return "more", more.group("topic").strip()
    return "why", None


def referenced(record: RankingRecord, text: str) -> list[RankedItem]:
    """The items a text names by position ("#2", "number 2", "the second one"), in the order it names them."""
    by_position = {i.position: i for i in record.items}
    named: list[RankedItem] = []
    for match in REFERENCE.finditer(text.lower()):
        position = int(match.group("n")) if match.group("n") else ORDINALS[match.group("ordinal")]
        if position in by_position and by_position[position] not in named:
            named.append(by_position[position])
    return named


def by_title(record: RankingRecord, text: str) -> RankedItem | None:
    """The item whose title shares the most words (at least two) with a text."""
    words = guard.content_words(text)
    overlap = max(((len(words & guard.content_words(i.title)), -i.position, i) for i in record.items),
                  key=lambda t: t[:2], default=(0, 0, None))  # fmt: skip
    return overlap[2] if overlap[0] >= 2 else None


def pick_item(record: RankingRecord, article_id: str | None, question: str, earlier: Sequence[str] = ()) -> RankedItem:
    """The item asked about: one the question names by position ("#2", "and the second one?"), else
    `article_id`, else one it names by title words, else the last one an earlier question named ("why that
    one?"), else the top item."""
    if not record.items:
        raise NotFound(f"ranking {record.ranking_id!r} is empty")
    named = referenced(record, question)
    if named:
        return named[0]
    if article_id is not None:
        item = next((i for i in record.items if i.article_id == article_id), None)
        if item is None:
            raise NotFound(f"article {article_id!r} is not in ranking {record.ranking_id!r}")
        return item
    for text in (question, *reversed(earlier)):
        item = (referenced(record, text) or [by_title(record, text)])[0]
        if item is not None:
            return item
    return record.items[0]


def compared_items(record: RankingRecord, question: str) -> list[RankedItem]:
    """The items a comparison names, in the order it names them: by position, else by title words on each side
    of "above"."""
    named = referenced(record, question)
    split = ABOVE.search(question.lower())
    if len(named) < 2 and split:
        for side in (question[: split.start(1)], question[split.end(1) :]):
            item = by_title(record, side)
            if item is not None and item not in named:
                named.append(item)
    return named[:2]


def item_weights(item: RankedItem, weights: dict[str, float]) -> dict[str, float]:
    """The weights the blend used for an item: a candidate without relevance had the others scaled up."""
    if item.relevance_source == "none":
        return dict(without(BlendWeights(**weights), "relevance"))
    return weights


def compare_answer(first: RankedItem, second: RankedItem, record: RankingRecord) -> str:
    """Why one item is above another, from the two items' signals in the record: which signals put it ahead, by
    how much of the blended score, and what the lower one would need to pass it."""
    upper, lower = sorted((first, second), key=lambda i: i.position)
    text = "" if upper is first else f'It is not: "{first.title}" is #{first.position}, below #{second.position}. '
    wu, wl = item_weights(upper, record.weights), item_weights(lower, record.weights)
    names = [spec.name for spec in BLEND if spec.name in upper.signals and spec.name in lower.signals]
    gains = sorted(
        ((wu.get(n, 0.0) * upper.signals[n] - wl.get(n, 0.0) * lower.signals[n], n) for n in names), reverse=True
    )
    text += (f'"{upper.title}" (#{upper.position}) is above "{lower.title}" (#{lower.position}): a blended score of '
             f"{upper.score:.3f} against {lower.score:.3f}.")  # fmt: skip
    ahead = [f"{n} ({upper.signals[n]:.2f} against {lower.signals[n]:.2f}, {d:+.3f})" for d, n in gains if d > 5e-4]
    behind = [f"{n} ({lower.signals[n]:.2f} against {upper.signals[n]:.2f})" for d, n in gains[::-1] if d < -5e-4]
    if ahead:
        text += f" It is ahead on {', '.join(ahead[:2])}."
    if behind:
        text += f" #{lower.position} is ahead on {', '.join(behind[:2])}, which does not make up for it."
    gap = upper.score - lower.score
    if gap < 5e-4:  # greedy placement: diversity is scored against what was placed above, so order can beat score
        return text + f" It was placed first: the blend fills slot by slot, and #{lower.position} came later."
    for spec in sorted(SIGNALS, key=lambda spec: -wl.get(spec.name, 0.0)):
        weight, value = wl.get(spec.name, 0.0), lower.signals.get(spec.name, 0.0)
        if weight > 0 and value + gap / weight <= 1.0:
            text += (f" To pass it, #{lower.position} would need a {spec.name} of {value + gap / weight:.2f} "
                     f"instead of {value:.2f}.")  # fmt: skip
            break
    else:
        text += f" No single signal could lift #{lower.position} past it."
    return text


def reblend(
    items: Sequence[RankedItem],
    embeddings: np.ndarray,
    weights: dict[str, float],
    changed: dict[str, dict[str, float]] | None = None,
) -> dict[str, int]:
    """Each item's position (by article id) when a record's items are blended again: with these weights and,
    for `changed` items, these signal values. With the record's own weights and values it gives the record's
    order (the blend places greedily, so the best of the whole candidate set was the best of these too)."""
    changed = changed or {}
    signals = [
        Signals(**{spec.name: changed.get(i.article_id, {}).get(spec.name, i.signals.get(spec.name, 0.0))
                   for spec in SIGNALS})
        for i in items
    ]  # fmt: skip
    each = [BlendWeights(**item_weights(i, weights)) for i in items]
    return {items[p.index].article_id: n for n, p in enumerate(blend_rank(signals, embeddings, each), start=1)}


def main_reasons(item: RankedItem, weights: dict[str, float], n: int = 2) -> list[str]:
    """The signals that contributed most to the blended score (weight x value), in words."""
    contributions = sorted(
        ((weights.get(name, 0.0) * item.signals.get(name, 0.0), name) for name in REASONS), reverse=True
    )
    return [REASONS[name] for value, name in contributions[:n] if value > 0]


def record_answer(item: RankedItem, record: RankingRecord) -> str:
    """The answer written from the record alone: always true, if plain."""
    reasons = main_reasons(item, record.weights) or ["it scored well on the blend of signals"]
    text = f'"{item.title}" was #{item.position} in your feed mainly because {" and ".join(reasons)}.'
    if record.cold_start:
        text += " You had no reading history yet, so fresh and popular articles came first."
    if item.grounded_in:
        text += f" It connects to {' and to '.join(map(fact_phrase, item.grounded_in))}."
    return text


def fact_phrase(fact: str) -> str:
    """A profile fact of the record ('interest: soccer', 'read: "T"') in words."""
    kind, _, value = fact.partition(": ")
    said = {"interest": f"your interest in {value}", "read": f"{value}, which you read",
            "judged": "what our model made of your recent reading", "follows": "a story you follow"}  # fmt: skip
    return said.get(kind, fact)


NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
# words an explanation may use besides the record's and the profile's own
EXPLAINING = frozenset(
    "recommended recommend because since article articles story stories news feed like likes liked enjoy might "
    "may read reading follow following followed interest interested interests topic topics about close closely "
    "similar fresh new newest recent latest popular readers many variety varied different adds add which what "
    "this that these your you also well top ranked rank ranks position first second third matches match "
    "matched profile based shows picked chose chosen here here's it's you're you've you'll think judged relevant "
    "model clicked trending lot lots much more just because one get see seen high higher score scored blend "
    "mix mixes reason reasons related relates connects connected shown often others click".split()
)


def stem(word: str) -> str:
    """Crude, but the same on both sides: enough to let "follows" match "follow"."""
    return word[:6]


def judge(text: str, allowed: Sequence[str], main_signal: str) -> tuple[str, str | None]:
    """The model's reply, cleaned to at most two complete sentences, and why it may not be shown (None: it may).
    Faithful means: said to the reader, no chat debris, no meta-talk or questions back, no number or word that is
    not in the record, the profile or the words an explanation uses, and it states the record's main reason (its
    main signal, in words). A pure function: what it lets through is what a reader may be shown."""
    reply, fault = guard.check(text, 2, 2 * explain.MAX_CHARS, ends=".!")
    if fault is not None:
        return reply, fault
    source = " ".join(allowed)
    if set(NUMBER.findall(reply)) - set(NUMBER.findall(source)):
        return reply, "a number the record does not have"
    known = {stem(w) for w in guard.content_words(source) | EXPLAINING}
    words = {stem(w) for w in guard.content_words(reply)}
    if words - known:
        return reply, "words the record and the profile do not have"
    if not words & {stem(w) for w in SAYING[main_signal]}:
        return reply, "not the main reason"
    return reply, None


def faithful(text: str, allowed: Sequence[str], main_signal: str) -> str | None:
    """The model's reply if it may be shown (`judge`), else None."""
    reply, fault = judge(text, allowed, main_signal)
    return reply if fault is None else None


def main_signal(item: RankedItem, weights: dict[str, float]) -> str:
    """The signal that contributed most to an item's blended score."""
    return max(REASONS, key=lambda name: (weights.get(name, 0.0) * item.signals.get(name, 0.0), name))


class Chat:
    def __init__(
        self,
        feedback: FeedbackStore,
        articles: ArticleStore,
        backend: Backend,
        clock: Callable[[], float],
        profile: Callable[..., Profile] | None = None,
        recency_hours: float = 24 * 7,
        standings: Callable[[str], Sequence[tuple[int, Article]]] | None = None,
        max_chars: int = MAX_CHAT_CHARS,
        search: Callable[[str, str], Any] | None = None,
    ):
        self.feedback = feedback
        self.articles = articles
        self.backend = backend
        self.clock = clock
        self.profile = profile  # a reader's profile now, or without some articles ("why not", "what if")
        self.recency_hours = recency_hours
        self.standings = standings  # where a reader's candidates rank now: (position, article), best first
        self.max_chars = max_chars
        self.search = search  # a reader's search (feed.recommender: a ranking of articles found for a query)

    def record(self, user_id: str, ranking_id: str | None, article_id: str | None) -> RankingRecord:
        if ranking_id is None and article_id is None:
            raise InvalidInput("give a ranking_id or an article_id")
        record = (
            self.feedback.ranking(ranking_id) if ranking_id else self.feedback.latest_ranking_with(user_id, article_id)
        )
        if record.user_id != user_id:
            raise NotFound(f"ranking {record.ranking_id!r} is not for user {user_id!r}")
        return record

    def prepare(
        self, user_id: str, messages: Sequence[Message], ranking_id: str | None = None, article_id: str | None = None
    ) -> tuple[Reply, GenerateRequest | None]:
        """Apply the request's preference change and answer from the record; for a "why", also the prompt that
        lets the model phrase the answer (the caller runs it, so that it can stream)."""
        check_messages(messages, self.max_chars)
        question = messages[-1].content
        record = self.record(user_id, ranking_id, article_id)
        earlier = [m.content for m in messages[:-1] if m.role == "user"]
        item = pick_item(record, article_id, question, earlier)
        intent, topic = intent_of(question)
        reply = Reply(
            text=record_answer(item, record),
            source="record",
            intent=intent,
            ranking_id=record.ranking_id,
            article_id=item.article_id,
            title=item.title,
            facts={
                "position": item.position,
                "score": item.score,
                "signals": dict(item.signals),
                "weights": record.weights,
                "grounded_in": list(item.grounded_in),
                "explanation": item.explanation,
            },
        )
        if intent == "above":
            pair = compared_items(record, question)
            if len(pair) == 2:
                text = compare_answer(pair[0], pair[1], record)
                return replace(reply, text=text, article_id=pair[0].article_id, title=pair[0].title), None
            reply = replace(reply, intent="why")  # one item named: why it is where it is
        if intent == "what-if" and self.profile is not None:
            return self._what_if(reply, user_id, item, record, question), None
        if intent == "why-not" and topic and self.profile is not None:
            return self._why_not(reply, user_id, topic.lower(), record), None
        if intent == "undo":
            return self._undo(reply, user_id), None
        if intent in ("follow", "unfollow"):
            return self._follow(reply, user_id, item, intent == "follow"), None
        if intent == "search" and topic and self.search is not None:
            return self._search(reply, user_id, topic), None
        if intent == "less":
            return self._less(reply, user_id), None
        if intent == "more":
            return self._more(reply, user_id, topic or self._label(item.article_id)), None
        article = self.articles.get([item.article_id]).get(item.article_id)
        category = article.article.category if article else "news"
        # what a phrased answer may speak of: the record, the profile it was made for, the item's topic
        allowed = (*(i.title for i in record.items), *item.grounded_in, record.profile_text, category)
        reply = replace(reply, allowed=allowed, main_signal=main_signal(item, record.weights))
        system = prompts.render(
            CHAT,
            title=item.title,
            category=category,
            position=item.position,
            reasons=", ".join(main_reasons(item, record.weights)) or "a good blend of signals",
            grounded_in=list(item.grounded_in),
        )
        turns = messages[-(2 * HISTORY_TURNS - 1) :]
        conversation = "\n".join(f"{m.role}: {m.content[:TURN_CHARS]}" for m in turns)
        return reply, GenerateRequest(self.backend.chat_prompt(system, conversation), CHAT_TOKENS)

    def finish(self, reply: Reply, generated: str) -> Reply:
        """The model's phrasing if it validates against the record, else the record's own answer."""
        phrased = faithful(generated, reply.allowed, reply.main_signal)
        return replace(reply, text=phrased, source="llm") if phrased else reply

    def phrase(self, reply: Reply, request: GenerateRequest) -> Reply:
        """Let the model phrase a "why" answer. If the model fails, the record's own answer stands, marked
        degraded: the reader still gets a true answer."""
        try:
            generated = self.backend.generate([request])[0].text
        except Exception as exc:
            if not model_failure(exc):
                raise
            log.exception("the LLM failed to phrase a chat answer; answering from the record")
            return replace(reply, degraded=True)
        return self.finish(reply, generated)

    def answer(
        self, user_id: str, messages: Sequence[Message], ranking_id: str | None = None, article_id: str | None = None
    ) -> Reply:
        reply, request = self.prepare(user_id, messages, ranking_id, article_id)
        return reply if request is None else self.phrase(reply, request)

    # -- what if -----------------------------------------------------------------------------------------
    def _what_if(self, reply: Reply, user_id: str, item: RankedItem, record: RankingRecord, question: str) -> Reply:
        """Counterfactuals computed by blending the record's items again, never guessed: each term of the blend
        switched off, and each recently read article taken out of the profile (its similarity and topic
        affinity recomputed; the LLM's relevance held as it was). Answers the one the question names, else the
        one that moves the item most."""
        hits = self.articles.get([i.article_id for i in record.items])
        items = [i for i in record.items if i.article_id in hits]
        if item not in items:
            raise NotFound(f"article {item.article_id!r} is no longer in the store")
        embeddings = np.stack([hits[i.article_id].embedding for i in items])
        now = reblend(items, embeddings, record.weights)[item.article_id]
        outcomes: dict[str, tuple[int, str]] = {}  # what changed → (new position, in words)
        for spec in BLEND:
            if record.weights.get(spec.name, 0.0) > 0 and spec.name in item.signals:
                moved = reblend(items, embeddings, {**record.weights, spec.name: 0.0})[item.article_id]
                outcomes[spec.name] = (moved, f"without the {spec.name} term it would be #{moved}")
        profile = self.profile(user_id)  # type: ignore[misc]
        for read in profile.history[:5]:
            without = self.profile(user_id, frozenset({read.article_id}))  # type: ignore[misc]
            sims = (
                np.zeros(len(items)) if without.query is None else cosine_similarity(embeddings, without.query[None, :])
            )
            changed = {
                i.article_id: {
                    "similarity": float(np.clip(sim, 0.0, 1.0)),
                    "affinity": without.affinity(hits[i.article_id].article),
                }
                for i, sim in zip(items, np.ravel(sims), strict=True)
            }
            moved = reblend(items, embeddings, record.weights, changed)[item.article_id]
            outcomes[read.title] = (moved, f'if you had not read "{read.title}" it would be #{moved} (similarity '
                                           f"{changed[item.article_id]['similarity']:.2f} instead of "
                                           f"{item.signals.get('similarity', 0.0):.2f}, the LLM's relevance as it "
                                           "was)")  # fmt: skip
        asked = self._asked_change(question, outcomes)
        ranked = sorted(outcomes, key=lambda k: (-abs(outcomes[k][0] - now), k))
        lead = asked or (ranked[0] if ranked else None)
        facts = {"position": now, "what_if": {k: v[0] for k, v in outcomes.items()}}
        text = f'"{item.title}" is #{now} of {len(items)} in this feed'
        if lead is None or (asked is None and outcomes[lead][0] == now):
            text += f", and no one change moves it: it stays #{now} without any one term of the blend or any one"
            return replace(reply, text=text + " article you read.", facts=facts)
        said = outcomes[lead][1]
        text += f". {said[:1].upper()}{said[1:]}." + ("" if asked else " That is what moves it most.")
        others = [k for k in ranked if k != lead][:2]
        if others:
            text += " Besides: " + "; ".join(outcomes[k][1] for k in others) + "."
        return replace(reply, text=text, facts=facts)

    @staticmethod
    def _asked_change(question: str, outcomes: dict[str, tuple[int, str]]) -> str | None:
        """The change a what-if question names: a title the reader read (two words of it at least, so that a
        title's "new" is not taken for freshness), else a term of the blend."""
        asked = guard.content_words(question)
        titles = [k for k in outcomes if k not in NAMED]
        best = max(titles, key=lambda t: len(guard.content_words(t) & asked), default=None)
        if best is not None and len(guard.content_words(best) & asked) >= 2:
            return best
        words = set(re.findall(r"[a-z]+", question.lower()))
        return next((n for n, synonyms in NAMED.items() if n in outcomes and words & set(synonyms)), None)

    # -- why not ------------------------------------------------------------------------------------------
    def _why_not(self, reply: Reply, user_id: str, topic: str, record: RankingRecord) -> Reply:
        """ "Why don't I see more X?" from the reader's profile, the feed and the articles there are: a mute, how
        much of their reading X is, whether there are fresh X articles, and where X stands in the feed."""
        profile = self.profile(user_id)  # type: ignore[misc]
        hits = self.articles.get([i.article_id for i in record.items])
        labels = {a: (hit.article.category, hit.article.subcategory) for a, hit in hits.items()}
        in_feed = [i for i in record.items if topic in labels.get(i.article_id, ())]
        share = max(profile.category_shares.get(topic, 0.0), profile.subcategory_shares.get(topic, 0.0))
        days = round(self.recency_hours / 24)
        fresh = len(self.articles.recent(since=self.clock() - self.recency_hours * 3600, k=50, categories=[topic]))
        below = self._ranked_now(user_id, topic, len(record.items))  # a whole ranking of the candidates: once
        facts = {"topic": topic, "muted": topic in profile.mutes, "share_of_reading": round(share, 3),
                 "fresh_articles": fresh, "in_feed": [i.position for i in in_feed],
                 "below_the_cut": [p for p, _ in below]}  # fmt: skip
        if topic in profile.mutes:
            text = f'You muted "{topic}", so none of it is shown. Say "more about {topic}" to see it again.'
        else:
            parts = [
                f"{topic.capitalize()} is {share:.0%} of your reading." if share > 0
                else f"You have not read anything in {topic} yet, so there is no reading of yours to match it to.",
                f"There are no {topic} articles from the last {days} days." if fresh == 0
                else f"There are {fresh}{'+' if fresh == 50 else ''} {topic} articles from the last {days} days.",
                "In this feed: " + ", ".join(f'#{i.position} "{i.title}"' for i in in_feed) + "." if in_feed
                else f"None made this feed's {len(record.items)} items.",
                *(["Just below the cut, ranked now: " + ", ".join(f'#{p} "{a.title}"' for p, a in below) + "."]
                  if below else []),
                f'Say "more about {topic}" and your next feed will lean towards it.',
            ]  # fmt: skip
            text = " ".join(parts)
        shown = in_feed[0] if in_feed else record.items[0]
        return replace(reply, text=text, article_id=shown.article_id, title=shown.title, facts=facts)

    def _ranked_now(self, user_id: str, topic: str, shown: int) -> list[tuple[int, Article]]:
        """The reader's candidates in `topic` that rank just below the `shown` items now (three at most)."""
        ranked = self.standings(user_id) if self.standings is not None else ()
        return [(p, a) for p, a in ranked if p > shown and topic in (a.category, a.subcategory)][:3]

    # -- preference changes -------------------------------------------------------------------------------
    def _label(self, article_id: str) -> str:
        """What "less/more like this" is about: the article's subcategory, or its category when it has none."""
        hit = self.articles.get([article_id]).get(article_id)
        if hit is None:
            raise NotFound(f"article {article_id!r} is no longer in the store")
        return hit.article.subcategory or hit.article.category

    def _undo(self, reply: Reply, user_id: str) -> Reply:
        """Revert the reader's last preference change made in chat, as the store kept it (never as the client's
        copy of the conversation says it: that copy is the client's to write)."""
        change = self.feedback.last_change(user_id)
        if not change:
            return replace(reply, text="There is no change to undo in this conversation.")
        prefs, label = self.feedback.preferences(user_id), change["label"]
        if change["kind"] in ("follow", "unfollow"):
            updated = prefs.following(label, change["kind"] == "unfollow")
            self.feedback.set_preferences(user_id, updated, self.clock())
            said = "You no longer follow that story." if change["kind"] == "follow" else "You follow that story again."
            return replace(reply, text=f"Undone: {said}", preferences=updated)
        if change["kind"] == "mute":
            interests = [*prefs.interests, label] if change.get("was_interest") else prefs.interests
            updated = Preferences.newest(interests, [m for m in prefs.mutes if m != label], prefs.follows)
            text = f'Undone: "{label}" is no longer muted.'
        else:
            mutes = [*prefs.mutes, label] if change.get("was_muted") else prefs.mutes
            updated = Preferences.newest([i for i in prefs.interests if i != label], mutes, prefs.follows)
            text = f'Undone: "{label}" is no longer one of your interests.'
        self.feedback.set_preferences(user_id, updated, self.clock())  # no change kept: an undo is not undone
        return replace(reply, text=text, preferences=updated)

    def _follow(self, reply: Reply, user_id: str, item: RankedItem, follow: bool) -> Reply:
        """Follow (or stop following) the story of the item asked about."""
        story = item.story or item.article_id
        current = self.feedback.preferences(user_id)
        if (story in current.follows) == follow:
            said = "You follow this story already." if follow else "You do not follow this story."
            return replace(reply, text=said, preferences=current)
        updated = current.following(story, follow)
        change = {"kind": "follow" if follow else "unfollow", "label": story}
        self.feedback.set_preferences(user_id, updated, self.clock(), change)
        text = (f'Done: you follow the story of "{item.title}". Its new articles come first in your feed while they '
                "are new. Say \"stop following\" to stop." if follow else
                f'Done: you no longer follow the story of "{item.title}".')  # fmt: skip
        return replace(reply, text=text, preferences=updated, facts={**reply.facts, "story": story})

    def _search(self, reply: Reply, user_id: str, topic: str) -> Reply:
        """ "Find me news about X": the reader's search, ranked by their own blend; its top three, by title."""
        found = self.search(user_id, topic)  # type: ignore[misc]
        if not found.items:
            return replace(reply, text=f'I found nothing about "{topic}".', facts={"query": topic})
        listed = "; ".join(f'#{i.record.position} "{i.article.title}"' for i in found.items[:3])
        return replace(reply, text=f'Here is what I found about "{topic}": {listed}.', ranking_id=found.ranking_id,
                       article_id=found.items[0].article.id, title=found.items[0].article.title,
                       facts={"query": topic, "found": [i.article.id for i in found.items]})  # fmt: skip

    def _less(self, reply: Reply, user_id: str) -> Reply:
        label = self._label(reply.article_id)
        current = self.feedback.preferences(user_id)
        if label in current.mutes:  # nothing changes, so there is nothing to undo either
            return replace(reply, text=f'You already see no "{label}" articles.', preferences=current)
        updated = current.with_mute(label)
        change = {"kind": "mute", "label": label, "was_interest": label in current.interests}
        self.feedback.set_preferences(user_id, updated, self.clock(), change)
        text = f'Done: you will see no more "{label}" articles. Say "undo that" to take it back.'
        if label in current.interests:
            text += f" {WAS_INTEREST}"
        return replace(reply, text=text, preferences=updated)

    def _more(self, reply: Reply, user_id: str, topic: str) -> Reply:
        topic = topic.lower()
        current = self.feedback.preferences(user_id)
        if topic in current.interests:
            return replace(reply, text=f'"{topic}" is one of your interests already.', preferences=current)
        updated = current.with_interest(topic)
        change = {"kind": "interest", "label": topic, "was_muted": topic in current.mutes}
        self.feedback.set_preferences(user_id, updated, self.clock(), change)
        text = f'Done: "{topic}" is now one of your interests, and your next feed will lean towards it.'
        if topic in current.mutes:
            text += f" {WAS_MUTED}"
        return replace(reply, text=text, preferences=updated)
