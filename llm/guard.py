"""Model text is untrusted: the one check before a reader sees any of it (an explanation, a chat answer).

`check` cuts the model's text to complete sentences and says what makes it unfit to show: its length, a banned
phrase (chat-template tokens, links, talk of being a model), chat-template debris and role markers, meta-talk
or a question back, not being said to the reader. What each use adds on top (an explanation must name every
fact its template names; a chat answer must use only the record's words) stays with that use.
"""

from __future__ import annotations

import re

MIN_CHARS = 15
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
ADDRESSES_READER = re.compile(r"\byou(r)?\b", re.IGNORECASE)
BANNED = re.compile(r"<\||\bhttps?://|as an ai\b|language model", re.IGNORECASE)
# chat-template debris and role markers, a model talking to itself
DEBRIS = re.compile(r"\b(user|assistant|system|human)\s*:|\bthe answer is\b|<\||\|>|\[/?inst\]|#{2,}", re.I)
# talk about the conversation itself, hedging, questions back to the reader
META = re.compile(
    r"\?|\b(i'?m not sure|i am not sure|i think|i believe|i hope|your question|answered|let me know|as an ai"
    r"|language model|i can'?t|i cannot|sorry|i don'?t know)\b",
    re.I,
)
STOPWORDS = frozenset(
    "a an and are as at be by for from has have in into is it its of on or over than that the their this to "
    "was were will with after before new says said amid".split()
)


def sentences(text: str, n: int, ends: str = ".!?") -> str:
    """The first `n` complete sentences of a text, whitespace collapsed; one cut off by a token limit (not ending
    in one of `ends`) is dropped."""
    return " ".join([s for s in SENTENCE_END.split(" ".join(text.split())) if s and s[-1] in ends][:n])


def check(text: str, n: int, max_chars: int, ends: str = ".!?") -> tuple[str, str | None]:
    """The first `n` complete sentences of a model's text, and why they may not be shown (None: they may)."""
    cut = sentences(text, n, ends)
    if not MIN_CHARS <= len(cut) <= max_chars or BANNED.search(cut):
        return cut, f"not {'one' if n == 1 else f'1 to {n}'} complete sentence{'s' if n > 1 else ''} of plain text"
    if DEBRIS.search(text):
        return cut, "chat-template debris"
    if META.search(text):
        return cut, "meta-talk or a question"
    if not ADDRESSES_READER.search(cut):
        return cut, "not said to the reader"
    return cut, None


def content_words(text: str) -> set[str]:
    """The words of a text that carry its content: lower case, longer than two letters, no stopword."""
    return {w for w in re.findall(r"[a-z0-9']+", text.lower()) if len(w) > 2 and w not in STOPWORDS}
