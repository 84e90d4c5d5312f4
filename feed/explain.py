"""Explanations: one sentence per top item, grounded in the reader's profile.

The template states the facts that ground an item (the reader's interests it matches, the title they read that
is closest); the LLM may rewrite that in plainer words, but its text is untrusted: it is cleaned, cut to one
sentence, and kept only if it still names every one of those facts (a rewrite less specific than the template
is not kept). The record says which one the reader saw.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from core.llm import Backend, GenerateRequest
from core.records import SIGNALS, Article, Hit, Signals
from feed.blend import cosine_similarity
from feed.profile import HistoryItem, Profile
from llm import guard, prompts

SYSTEM = "system.v1"
EXPLAIN = "explain.v1"
EXPLAIN_ANSWER = "explain_answer.v1"
EXPLAIN_TOKENS = 32
HISTORY_MATCH_MIN = 0.35  # cosine above which a history title counts as related to a candidate
MAX_CHARS = 280
SPECULATIVE_TAIL = ", but "


@dataclass(frozen=True)
class Grounding:
    """What in the profile connects it to one candidate."""

    interests: tuple[str, ...] = ()  # profile labels the candidate's category or subcategory matches
    history: HistoryItem | None = None  # the most similar history article, if similar enough
    judged: bool = False  # the LLM's relevance led the item's score; `history` is among the titles it read
    followed: bool = False  # it is an article of a story the reader follows
    query: str = ""  # the reader's search it was found for

    @property
    def facts(self) -> tuple[str, ...]:
        facts = [f"interest: {label}" for label in self.interests]
        if self.history is not None:
            facts.append(f'read: "{self.history.title}"')
        if self.judged:
            facts.append("judged: relevance")
        if self.followed:
            facts.append("follows: this story")
        if self.query:
            facts.append(f'search: "{self.query}"')
        return tuple(facts)

    @classmethod
    def from_facts(cls, facts: Sequence[str]) -> Grounding:
        """The grounding a ranking record's `grounded_in` states (what the template said): to rewrite it later."""
        interests = tuple(f.removeprefix("interest: ") for f in facts if f.startswith("interest: "))
        titles = [f.removeprefix("read: ")[1:-1] for f in facts if f.startswith('read: "') and f.endswith('"')]
        history = HistoryItem("", titles[0], "", np.zeros(0, dtype=np.float32)) if titles else None
        searched = [f.removeprefix("search: ")[1:-1] for f in facts if f.startswith('search: "')]
        return cls(interests, history, "judged: relevance" in facts, "follows: this story" in facts,
                   searched[0] if searched else "")  # fmt: skip


LLM_SIGNALS = ("relevance", "match")  # what the LLM says of an item: its P(Yes), and its match (llm/tower.py)


def model_leads(signals: Signals, weights: Mapping[str, float]) -> bool:
    """Whether the LLM's terms together (its relevance and its match) are the largest term of an item's blended
    score (weight × value)."""
    terms = {spec.name: weights.get(spec.name, 0.0) * getattr(signals, spec.name) for spec in SIGNALS
             if spec.name not in LLM_SIGNALS}  # fmt: skip
    llm = sum(weights.get(name, 0.0) * getattr(signals, name) for name in LLM_SIGNALS)
    return llm > 0 and llm > max(terms.values(), default=0.0)


def ground(profile: Profile, article: Article, embedding: np.ndarray, model_read: int | None = None) -> Grounding:
    """What in the profile connects it to one candidate: the interests its topics match, and the history title
    closest to it if close enough. `model_read`: the LLM's relevance led the item's score, and the LLM read the
    reader's latest `model_read` titles: the closest of those is named whatever its similarity, as what the
    judgement rests on (the reader can check that they read it)."""
    labels = profile.labels
    interests = tuple(dict.fromkeys(x for x in (article.category, article.subcategory) if x and x in labels))
    history = None
    read = profile.history[:model_read] if model_read else profile.history
    if read:
        sims = cosine_similarity(embedding[None, :], np.stack([h.embedding for h in read]))[0]
        best = int(np.argmax(sims))
        if model_read or sims[best] >= HISTORY_MATCH_MIN:
            history = read[best]
    followed = bool(profile.follows) and (article.story or article.id) in profile.follows
    return Grounding(interests, history, judged=bool(model_read and read), followed=followed)


def groundings(
    profile: Profile,
    hits: Sequence[Hit],
    signals: Sequence[Signals],
    weights: Mapping[str, float],
    model_read: int,
    query: str | None = None,
) -> list[Grounding]:
    """The grounding of each of these items (the feed's top, in order): where the LLM's relevance led an item's
    score, what the judgement rests on (`ground` with `model_read`, the titles the LLM read); in a search, the
    query it was found for."""
    found = []
    for h, s in zip(hits, signals, strict=True):
        led = not profile.cold_start and model_leads(s, weights)
        found.append(replace(ground(profile, h.article, h.embedding, model_read if led else None), query=query or ""))
    return found


def reason_text(grounding: Grounding, article: Article) -> str:
    """The signals in words: what the prompt hands the LLM and what the template fallback says."""
    parts = [f'it matches your search "{grounding.query}"'] if grounding.query else []
    parts += ["you follow this story"] if grounding.followed else []
    if grounding.judged and grounding.history is not None:
        parts.append(f'our model judged it a match for what you read lately, closest to "{grounding.history.title}"')
        if grounding.interests:
            parts.append(f"it is about {' and '.join(grounding.interests)}, which you follow")
        return ", and ".join(parts)
    if grounding.interests:
        parts.append(f"it is about {' and '.join(grounding.interests)}, which you follow")
    if grounding.history is not None:
        parts.append(f'it is close to "{grounding.history.title}", which you read')
    if not parts:
        parts.append(f"it is new in {article.category or 'the news'} and adds variety to your feed")
    return ", and ".join(parts)


def template_explanation(grounding: Grounding, article: Article) -> str:
    return f"Recommended because {reason_text(grounding, article)}."


def cites(text: str, grounding: Grounding) -> bool:
    """Does the text name every fact the template names: each interest (as a word) and, when there is one,
    enough of the matched history title? A rewrite that drops one is less specific than the template."""
    lowered = text.lower()
    for label in grounding.interests:
        if not re.search(rf"\b{re.escape(label.lower())}\b", lowered):
            return False
    if grounding.followed and "follow" not in lowered:
        return False
    if grounding.query and grounding.query.lower() not in lowered:
        return False
    if grounding.history is not None:
        title_words = guard.content_words(grounding.history.title)
        if title_words and len(title_words & guard.content_words(text)) < max(2, (len(title_words) + 1) // 2):
            return False
    return bool(grounding.facts)


def clean(text: str) -> str:
    """The first complete sentence; one cut off by the token limit is dropped."""
    text = re.sub(r"^\s*(assistant|answer|explanation)\s*:\s*", "", text, flags=re.IGNORECASE)
    text = guard.sentences(text.strip().strip('"').strip(), 1)
    # the small model tends to append an invented aside after a grounded clause: keep the clause
    head, sep, _ = text.partition(SPECULATIVE_TAIL)
    return head + "." if sep else text


def validate(text: str, grounding: Grounding) -> str | None:
    """The cleaned explanation if the guard lets it through (one sentence to the reader, no debris) and it names
    every fact its template names; else None."""
    cleaned, fault = guard.check(clean(text), 1, MAX_CHARS)
    return cleaned if fault is None and cites(cleaned, grounding) else None


def choose(generated: Sequence[str | None], groundings: Sequence[Grounding], articles: Sequence[Article]):
    """For each item: (explanation, source), the LLM's when it validates, the template's otherwise."""
    out = []
    for text, grounding, article in zip(generated, groundings, articles, strict=True):
        valid = validate(text, grounding) if text else None
        out.append((valid, "llm") if valid else (template_explanation(grounding, article), "template"))
    return out


def templates(articles: Sequence[Article], groundings: Sequence[Grounding], n: int) -> dict[int, tuple[str, str]]:
    """Explanations for the first n items from the template alone (when the model is not there to write)."""
    n = min(n, len(articles))
    chosen = choose([None] * n, groundings[:n], articles[:n])
    return {position: chosen[position - 1] for position in range(1, n + 1)}


def write(
    backend: Backend, articles: Sequence[Article], groundings: Sequence[Grounding], n: int, adapter: str | None = None
) -> dict[int, tuple[str, str]]:
    """Explanations for the first n items, keyed by position (1-based): (text, "llm" or "template").

    The model continues a fixed answer start ("You may like this because"), which keeps it talking to the
    reader about the reason it was given; items with no profile fact to cite go straight to the template.
    """
    n = min(n, len(articles))
    generated: list[str | None] = [None] * n
    wanted = [i for i in range(n) if groundings[i].facts]
    if wanted:
        start = prompts.render(EXPLAIN_ANSWER)
        system = prompts.render(SYSTEM)
        requests = [
            GenerateRequest(
                backend.chat_prompt(
                    system,
                    prompts.render(EXPLAIN, title=articles[i].title, reason=reason_text(groundings[i], articles[i])),
                )
                + start,
                EXPLAIN_TOKENS,
                adapter,
            )
            for i in wanted
        ]
        for i, generation in zip(wanted, backend.generate(requests), strict=True):
            generated[i] = f"{start} {generation.text}"
    chosen = choose(generated, groundings[:n], articles[:n])
    return {position: chosen[position - 1] for position in range(1, n + 1)}
