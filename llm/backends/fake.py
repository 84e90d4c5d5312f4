"""A deterministic stand-in LLM for unit tests of the logic around the model, and for demos without weights.

P(Yes) grows with the word overlap between the candidate and the prefix (the profile); `generate` answers
from a script of canned replies, or echoes the last line of the prompt.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from core.errors import NotFound
from core.llm import GenerateRequest, Generation, ScoreRequest
from llm.relevance import sigmoid

WORD = re.compile(r"[a-z]{4,}")


def _words(text: str) -> set[str]:
    return set(WORD.findall(text.lower()))


class FakeBackend:
    name = "fake"
    supports_adapters = True

    def __init__(self, replies: Sequence[str] = (), model: str = "fake-llm") -> None:
        self.model = model
        self.replies = list(replies)
        self.adapters: dict[str, str] = {}
        self.calls: list[str] = []

    def chat_prompt(self, system: str, user: str) -> str:
        return f"<system>{system}</system>\n<user>{user}\n"

    def score(self, requests: Sequence[ScoreRequest]) -> list[float]:
        self.calls.append(f"score:{len(requests)}")
        scores = []
        for r in requests:
            if r.adapter is not None and r.adapter not in self.adapters:
                raise NotFound(f"adapter {r.adapter!r} is not loaded")
            overlap = len(_words(r.suffix) & _words(r.prefix))
            shift = 0.5 if r.adapter else 0.0
            scores.append(sigmoid(overlap - 1.5 + shift))
        return scores

    def generate(self, requests: Sequence[GenerateRequest]) -> list[Generation]:
        self.calls.append(f"generate:{len(requests)}")
        out = []
        for r in requests:
            text = self.replies.pop(0) if self.replies else r.prompt.strip().splitlines()[-1]
            out.append(Generation(text, len(r.prompt.split()), len(text.split())))
        return out

    def load_adapter(self, name: str, path: str) -> None:
        self.adapters[name] = path

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def counters(self) -> dict[str, float]:
        return {}  # what it does is counted by the wrappers around it (MeteredBackend, MicroBatcher)

    def warm(self) -> None:
        pass
