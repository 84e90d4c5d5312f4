"""A backend wrapper that counts what the LLM does: candidates scored, prompt and completion tokens, and
prefix-cache hits (candidates whose shared prefix was already computed in the same batch). /metrics shows them."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Sequence
from typing import Any

from core.llm import Backend, GenerateRequest, Generation, ScoreRequest


class MeteredBackend:
    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.stats: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:  # name, model, adapters, chat_prompt, load_adapter, warm, ...
        return getattr(self.inner, name)

    def score(self, requests: Sequence[ScoreRequest]) -> list[float]:
        scores = self.inner.score(requests)
        prefixes = {(r.prefix, r.adapter) for r in requests}
        tokens = sum(self.inner.count_tokens(p) for p, _ in prefixes)
        tokens += sum(self.inner.count_tokens(r.suffix) for r in requests)
        with self._lock:
            self.stats["candidates_scored"] += len(requests)
            self.stats["prefix_cache_hits"] += len(requests) - len(prefixes)
            self.stats["prompt_tokens"] += tokens
        return scores

    def counters(self) -> dict[str, float]:
        with self._lock:
            return {**self.inner.counters(), **self.stats}

    def generate(self, requests: Sequence[GenerateRequest]) -> list[Generation]:
        generations = self.inner.generate(requests)
        with self._lock:
            self.stats["generations"] += len(generations)
            self.stats["prompt_tokens"] += sum(g.prompt_tokens for g in generations)
            self.stats["completion_tokens"] += sum(g.completion_tokens for g in generations)
        return generations
