"""Chat about a recommendation: "why was this recommended?", "show me less like this", "more about X".

Every answer is grounded in the stored ranking record (the signals and profile facts the ranker used), not in
a fresh guess. Requests to see less or more change the reader's explicit preferences, so the next feed differs.
The LLM may phrase the answer, but its text is untrusted: it is kept only if it is short, clean and names a
fact from the record; otherwise the reader gets the answer written from the record directly.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from agent import explain, prompts
from core.errors import InvalidInput, NotFound, model_failure
from core.llm import Backend, GenerateRequest
from core.records import BLEND, Preferences, RankedItem, RankingRecord
from core.stores import ArticleStore, FeedbackStore

CHAT = "chat.v1"
CHAT_TOKENS = 48
MAX_MESSAGES = 20
MAX_MESSAGE_CHARS = 2000
HISTORY_TURNS = 4  # earlier turns shown to the model: enough for "and the second one?", short enough for 2 cores

LESS = re.compile(r"\b(less like (this|that|it)|fewer like|not interested|no more (of )?(this|these)|stop showing)\b")
MORE_LIKE = re.compile(r"\bmore (like|of) (this|that|these|it)\b")
MORE = re.compile(r"\bmore (about|on|of)\s+(?P<topic>[\w][\w &'-]{1,40}?)\s*[.!?]*$")
POSITION = re.compile(r"(?:#|number |no\. ?)(?P<n>\d{1,3})\b")
SIGNAL_WORDS = {spec.name: spec.reason for spec in BLEND}

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


def check_messages(messages: Sequence[Message]) -> None:
    if not messages or messages[-1].role != "user":
        raise InvalidInput("messages must end with the user's question")
    if len(messages) > MAX_MESSAGES:
        raise InvalidInput(f"at most {MAX_MESSAGES} messages per request")
    for m in messages:
        if m.role not in ("user", "assistant") or not m.content.strip() or len(m.content) > MAX_MESSAGE_CHARS:
            raise InvalidInput(f"each message needs role user|assistant and 1-{MAX_MESSAGE_CHARS} characters")


def intent_of(question: str) -> tuple[str, str | None]:
    """("less", None), ("more", topic), ("more", None) for more like the item, or ("why", None): rules, not the
    model, decide what changes a profile."""
    text = " ".join(question.lower().split())
    if LESS.search(text):
        return "less", None
    if MORE_LIKE.search(text):
        return "more", None
    more = MORE.search(text)
    if more:
        return "more", more.group("topic").strip()
    return "why", None


def pick_item(record: RankingRecord, article_id: str | None, question: str) -> RankedItem:
    """The item asked about: by id, by "#N" in the question, by title words, or the top item."""
    if article_id is not None:
        item = next((i for i in record.items if i.article_id == article_id), None)
        if item is None:
            raise NotFound(f"article {article_id!r} is not in ranking {record.ranking_id!r}")
        return item
    if not record.items:
        raise NotFound(f"ranking {record.ranking_id!r} is empty")
    position = POSITION.search(question.lower())
    if position:
        item = next((i for i in record.items if i.position == int(position.group("n"))), None)
        if item is not None:
            return item
    words = explain.content_words(question)
    overlap = [(len(words & explain.content_words(i.title)), -i.position, i) for i in record.items]
    best = max(overlap, key=lambda t: t[:2])
    return best[2] if best[0] >= 2 else record.items[0]


def main_reasons(item: RankedItem, weights: dict[str, float], n: int = 2) -> list[str]:
    """The signals that contributed most to the blended score (weight x value), in words."""
    contributions = sorted(
        ((weights.get(name, 0.0) * item.signals.get(name, 0.0), name) for name in SIGNAL_WORDS), reverse=True
    )
    return [SIGNAL_WORDS[name] for value, name in contributions[:n] if value > 0]


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
    return {"interest": f"your interest in {value}", "read": f"{value}, which you read"}.get(kind, fact)


def valid_reply(text: str, facts: Sequence[str]) -> str | None:
    """The model's reply if short, clean, speaking to the reader and naming one of the facts; else None."""
    sentences = [s for s in explain.SENTENCE_END.split(" ".join(text.split())) if s and s[-1] in ".!?"][:2]
    reply = " ".join(sentences)
    if not 15 <= len(reply) <= 2 * explain.MAX_CHARS or explain.BANNED.search(reply):
        return None
    if not explain.ADDRESSES_READER.search(reply):
        return None
    words = explain.content_words(reply)
    for fact in facts:
        fact_words = explain.content_words(fact)
        if fact_words and len(fact_words & words) >= max(1, (len(fact_words) + 1) // 2):
            return reply
    return None


def fact_values(item: RankedItem) -> list[str]:
    """What a reply may cite: the profile facts ('interest: soccer' → 'soccer') and the title."""
    return [f.split(":", 1)[-1].strip().strip('"') for f in item.grounded_in] + [item.title]


class Chat:
    def __init__(self, feedback: FeedbackStore, articles: ArticleStore, backend: Backend, clock: Callable[[], float]):
        self.feedback = feedback
        self.articles = articles
        self.backend = backend
        self.clock = clock

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
        check_messages(messages)
        question = messages[-1].content
        record = self.record(user_id, ranking_id, article_id)
        item = pick_item(record, article_id, question)
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
                "cite": fact_values(item),
            },
        )
        if intent == "less":
            return self._less(reply, user_id), None
        if intent == "more":
            return self._more(reply, user_id, topic or self._label(item.article_id)), None
        article = self.articles.get([item.article_id]).get(item.article_id)
        system = prompts.render(
            CHAT,
            title=item.title,
            category=article.article.category if article else "news",
            position=item.position,
            reasons=", ".join(main_reasons(item, record.weights)) or "a good blend of signals",
            grounded_in=list(item.grounded_in),
        )
        turns = messages[-(2 * HISTORY_TURNS - 1) :]
        conversation = "\n".join(f"{m.role}: {m.content}" for m in turns)
        return reply, GenerateRequest(self.backend.chat_prompt(system, conversation), CHAT_TOKENS)

    def finish(self, reply: Reply, generated: str) -> Reply:
        """The model's phrasing if it validates against the record, else the record's own answer."""
        phrased = valid_reply(generated, reply.facts["cite"])  # type: ignore[arg-type]
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

    # -- preference changes -------------------------------------------------------------------------------
    def _label(self, article_id: str) -> str:
        """What "less/more like this" is about: the article's subcategory, or its category when it has none."""
        hit = self.articles.get([article_id]).get(article_id)
        if hit is None:
            raise NotFound(f"article {article_id!r} is no longer in the store")
        return hit.article.subcategory or hit.article.category

    def _less(self, reply: Reply, user_id: str) -> Reply:
        label = self._label(reply.article_id)
        updated = self.feedback.preferences(user_id).with_mute(label)
        self.feedback.set_preferences(user_id, updated, self.clock())
        text = f'Done: you will see no more "{label}" articles. Say "more about {label}" to undo it.'
        return replace(reply, text=text, preferences=updated)

    def _more(self, reply: Reply, user_id: str, topic: str) -> Reply:
        topic = topic.lower()
        updated = self.feedback.preferences(user_id).with_interest(topic)
        self.feedback.set_preferences(user_id, updated, self.clock())
        text = f'Done: "{topic}" is now one of your interests, and your next feed will lean towards it.'
        return replace(reply, text=text, preferences=updated)
