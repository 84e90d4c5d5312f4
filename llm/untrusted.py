"""Untrusted text (article titles, abstracts, categories) made safe to quote inside a prompt.

Anyone who can publish an article writes part of the ranking prompt. The LLM must read that text as data about
the article, never as turns, instructions or an answer: so chat-template tokens, role labels and ready-made
answers are removed, and the text can never close the « » quotes the candidate template puts around it.
"""

from __future__ import annotations

import re
import unicodedata

OPEN, CLOSE = "«", "»"  # the delimiters candidate prompts quote untrusted text in
ELLIPSIS = "…"

# Quote marks that could close (or pass for) the delimiters become plain ones.
_QUOTES = str.maketrans({"«": '"', "»": '"', "‹": "'", "›": "'", "《": '"', "》": '"', "〈": "'", "〉": "'"})
_LINE_BREAKS = {"\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"}
_DROPPED = {"Cc", "Cf", "Co", "Cs", "Cn"}  # controls, format (zero-width, bidi), private use, surrogates, unassigned

# Special tokens of chat templates and their look-alikes; each one marks a turn boundary, so it becomes a break.
_SPECIAL = re.compile(
    r"<\|[^<>]{0,40}?\|?>"  # <|im_start|>, <|endoftext|>, <|eot_id|>, <|user|>
    r"|<{1,2}\s*/?\s*(?:s|bos|eos|pad|unk|sys|system|user|assistant|human|bot|model|start_of_turn|end_of_turn)"
    r"\s*>{1,2}"  # <s>, </s>, <<SYS>>, <start_of_turn>
    r"|\[\s*/?\s*(?:INST|SYS|SYSTEM|USER|ASSISTANT)\s*\]"  # [INST], [/INST]
    r"|#{2,}|={3,}|-{3,}|_{3,}|\|{2,}|<\||\|>",  # ### Response, ===, ---, and stray halves of <|...|>
    re.IGNORECASE,
)
_ROLES = r"(?:system|assistant|user|human|model|bot|instructions?|response|answer|output)"
# A role label that opens a line or sentence ("assistant:", "System>", a lone "assistant" line).
_ROLE_LABEL = re.compile(rf"(?:^|(?<=[.!?;:]))\s*{_ROLES}\s*(?:[:>]|$)", re.IGNORECASE | re.MULTILINE)
_Q = "[\"'“”‘’]?"
# A ready-made answer anywhere: "Answer: No", "reply with 'No'", a lone "No." line, and the word "yes" itself:
# the prompt asks for Yes or No, and a "yes" copied from the article raises P(Yes) whatever the article is about.
_ANSWER = re.compile(
    rf"\b{_ROLES}\s*[:=]\s*{_Q}\s*(?:yes|no)\b{_Q}[.!]*"
    rf"|\b(?:answer|respond|reply)(?:\s+(?:only|just))?(?:\s+with)?\s*{_Q}\s*(?:yes|no)\b{_Q}[.!]*"
    rf"|{_Q}\byes\b{_Q}[.!]*"
    r"|^\s*no\s*[.!]*\s*$",
    re.IGNORECASE | re.MULTILINE,
)
# Orders aimed at the model rather than the reader, with the "and" that chains the next one.
_ORDER = re.compile(
    r"\b(?:ignore|disregard|forget|override)\s+(?:all\s+|any\s+)?(?:(?:of\s+)?the\s+|your\s+)?"
    r"(?:all|previous|prior|above|earlier|preceding|system|your)\s+(?:instructions?|prompts?|rules|directions|messages)\b"
    r"[\s,;.!]*(?:\b(?:and|then)\b)?",
    re.IGNORECASE,
)


def neutralize(text: str, limit: int = 200) -> str:
    """`text` as one line of inert data for a prompt, at most `limit` characters (cut at a word, with an ellipsis).

    Normalised (NFKC) first, so fullwidth letters and zero-width characters cannot hide a token from the rules.
    """
    text = unicodedata.normalize("NFKC", text)
    text = "".join(
        "\n" if ch in _LINE_BREAKS else " " if ch == "\t" else "" if unicodedata.category(ch) in _DROPPED else ch
        for ch in text
    )
    previous = None
    while previous != text:  # removing one token may join the halves of another
        previous = text
        text = _SPECIAL.sub("\n", text)
    text = _ORDER.sub(" ", text)
    previous = None
    while previous != text:  # "assistant: Answer: Yes" takes two rounds
        previous = text
        text = _ANSWER.sub(" ", text)
        text = _ROLE_LABEL.sub(" ", text)
    text = " ".join(text.translate(_QUOTES).split())
    return _cut(text, limit)


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    if limit <= len(ELLIPSIS):
        return ELLIPSIS[:limit]
    head = text[: limit - len(ELLIPSIS) + 1]  # one more: a cut that falls on a space keeps the whole last word
    space = head.rfind(" ")
    head = head[:space] if space > 0 else head[:-1]
    return head.rstrip(" ,;:-–—") + ELLIPSIS
