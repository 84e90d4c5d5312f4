"""What the LLM is asked and how its answer is read: the pointwise relevance prompts and the P(Yes) maths.

A relevance is P("Yes" | prompt(u, x)) from the first answer token's logits. The prompt is split into a prefix
shared by all of a reader's candidates (system, profile, question, the start of the answer) and a short suffix
per candidate (its own text and the answer cue), so the prefix's cache is computed once per reader. Serving,
training export and evaluation all render through `relevance_requests`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

from config.settings import Settings
from core.errors import InvalidInput
from core.llm import Backend, ScoreRequest
from core.records import Article
from llm import prompts

SYSTEM = "system.v1"
RELEVANCE = "relevance.v2"  # the question lives in the shared prefix, which ends where the answers begin
CANDIDATE = "candidate.v3"  # the article's own text, quoted as untrusted data, and the answer cue: nothing else
LISTWISE = "listwise.v1"
# What a candidate's suffix holds, by name, as (its text, cut to this many characters, with its category). Each
# costs about 20 prompt tokens a candidate on MIND-dev, the prefix's share included; the default was chosen by
# measurement on the tune part (docs/BENCHMARKS.md).
CANDIDATE_TEXTS: dict[str, tuple[Callable[[Article], str], int, bool]] = {
    "title": (lambda a: a.title, 52, False),
    "title+category": (lambda a: a.title, 40, True),
    "title+abstract": (lambda a: f"{a.title}. {a.abstract}" if a.abstract else a.title, 50, False),
}
DEFAULT_CANDIDATE_TEXT = Settings.model_fields["candidate_text"].default


def prompt_version(text: str = DEFAULT_CANDIDATE_TEXT) -> str:
    """The prompt a relevance was computed with: scores under another prompt are not comparable."""
    return f"{RELEVANCE}+{CANDIDATE}:{text}+profile.v1"


def scorer_key(model: str, adapter: str | None, text: str = DEFAULT_CANDIDATE_TEXT, strategy: str = "pointwise") -> str:
    """What a relevance score is only comparable under: model, adapter, prompts and strategy. The feed keys its
    cached scores by it, and a learned ranker names the scorer its relevance weight was fitted for."""
    return f"{model}|{adapter or '-'}|{prompt_version(text)}|{strategy}"


def candidate_text(article: Article, text: str = DEFAULT_CANDIDATE_TEXT) -> str:
    if text not in CANDIDATE_TEXTS:
        raise InvalidInput(f"unknown candidate text {text!r}; expected one of {', '.join(CANDIDATE_TEXTS)}")
    body, limit, with_category = CANDIDATE_TEXTS[text]
    return prompts.render(
        CANDIDATE, text=body(article), limit=limit, category=article.category if with_category else ""
    )


def listed(article: Article) -> str:
    """An article as one line of the listwise prompt."""
    return prompts.render(
        "candidate.v2", title=article.title, category=article.category, subcategory=article.subcategory, abstract=""
    )


def relevance_requests(
    backend: Backend,
    profile_text: str,
    articles: Sequence[Article],
    adapter: str | None = None,
    text: str = DEFAULT_CANDIDATE_TEXT,
) -> list[ScoreRequest]:
    """The pointwise prompts: one shared prefix (system, profile, question, the start of the answer), and per
    candidate only its own text and the answer cue.

    Training export renders examples through this same function, so served and trained prompts match.
    """
    prefix = backend.chat_prompt(prompts.render(SYSTEM), prompts.render(RELEVANCE, profile=profile_text))
    return [ScoreRequest(prefix, candidate_text(a, text), adapter) for a in articles]


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def yes_probability(logit_yes: float, logit_no: float) -> float:
    """P(Yes) normalised over the two answer tokens: softmax([yes, no])[0] = σ(yes - no)."""
    return sigmoid(logit_yes - logit_no)


def yes_probability_from_top(top_logprobs: Mapping[int, float], answer_ids: tuple[int, int]) -> float:
    """P(Yes) from the first answer token's top-k log-probabilities (what vLLM returns): logprob Yes − logprob No
    equals logit Yes − logit No (the softmax normaliser cancels), so this is the transformers backend's score.

    An answer missing from the top k is at most as likely as the least likely token shown, so it is taken at
    that bound: the score leans towards the answer that was shown, and errs only by how far below the top k the
    missing one really lies. With both missing neither answer is plausible and the model states no preference:
    0.5. `answer_ids` are the (Yes, No) token ids.
    """
    if not top_logprobs:
        raise ValueError("no log-probabilities to read the answer from")
    floor = min(top_logprobs.values())
    yes, no = (top_logprobs.get(token, floor) for token in answer_ids)
    return yes_probability(yes, no)
