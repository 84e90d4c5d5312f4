"""The LLM backend seam: batch-first, two calls.

`score` returns P(Yes) for each request from the first answer token's logits: no text is generated to rank.
A request is split into a `prefix` (the profile and the question, shared by all of one reader's candidates)
and a `suffix` (one candidate, ending where the answer starts), so a backend can compute the prefix once:
transformers reuses its KV cache, vLLM's prefix caching does the same on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

ANSWER_YES = "Yes"
ANSWER_NO = "No"


@dataclass(frozen=True)
class ScoreRequest:
    prefix: str
    suffix: str
    adapter: str | None = None

    @property
    def prompt(self) -> str:
        return self.prefix + self.suffix


@dataclass(frozen=True)
class GenerateRequest:
    prompt: str
    max_new_tokens: int = 48
    adapter: str | None = None


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int


@runtime_checkable
class Backend(Protocol):
    name: str  # "transformers", "vllm", "openai", "fake"
    model: str  # what was loaded, for the ranking record
    supports_adapters: bool
    adapters: dict[str, str]  # loaded adapters: name → folder

    def chat_prompt(self, system: str, user: str) -> str:
        """The model's chat template applied to one system and one user message, ready for the answer."""
        ...

    def score(self, requests: Sequence[ScoreRequest]) -> list[float]: ...

    def generate(self, requests: Sequence[GenerateRequest]) -> list[Generation]: ...

    def load_adapter(self, name: str, path: str) -> None: ...

    def count_tokens(self, text: str) -> int:
        """Tokens in a piece of prompt text, for cost accounting."""
        ...

    def warm(self) -> None:
        """Load the model now, so that the first request does not pay for it."""
        ...

    def counters(self) -> dict[str, float]:
        """What this backend and any it wraps counted (candidates scored, tokens, batches), by name: /metrics."""
        ...
