"""A keyword index of the articles (BM25, bm25s): what embeddings blur, names and numbers, match exactly.

Built in memory from the article store's texts, and built again in the background when the store has changed
(the index in hand answers meanwhile), so every instance keeps its own from the shared store.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("newsrank.keywords")
TOKENS = r"(?u)\b\w+\b"  # single letters and digits too: "G7", "5G", "F1", "2020"


class KeywordIndex:
    def __init__(self, texts: Callable[[], tuple[list[str], list[str]]], count: Callable[[], int],
                 refresh_seconds: float = 60.0) -> None:  # fmt: skip
        self.texts = texts  # every article's (ids, texts), from the store
        self.count = count  # how many articles the store holds now (cheap)
        self.refresh_seconds = refresh_seconds
        self._index: tuple[int, list[str], Any] | None = None  # (articles it holds, their ids, the BM25 index)
        self._checked = 0.0
        self._lock = threading.Lock()
        self._building = False

    def search(self, query: str, k: int) -> list[tuple[str, float]]:
        """The best-matching articles' ids and BM25 scores, best first (none when nothing matches a word)."""
        import bm25s

        index = self._current()
        if index is None:
            return []
        _, ids, bm25 = index
        tokens = bm25s.tokenize([query], token_pattern=TOKENS, show_progress=False)
        if not tokens.vocab or k <= 0:
            return []
        found, scores = bm25.retrieve(tokens, k=min(k, len(ids)), show_progress=False, n_threads=1)
        return [(ids[int(i)], float(s)) for i, s in zip(found[0], scores[0], strict=True) if s > 0]

    def _current(self) -> tuple[int, list[str], Any] | None:
        with self._lock:
            index, due = self._index, time.monotonic() - self._checked > self.refresh_seconds
            if due:
                self._checked = time.monotonic()
        if index is None:
            return self._build()
        if due and not self._building and self.count() != index[0]:
            self._building = True
            threading.Thread(target=self._build, daemon=True, name="keywords").start()
        return index

    def _build(self) -> tuple[int, list[str], Any] | None:
        import bm25s

        try:
            ids, texts = self.texts()
            if not ids:
                return None
            bm25 = bm25s.BM25()
            bm25.index(bm25s.tokenize(texts, token_pattern=TOKENS, show_progress=False), show_progress=False)
            index = (len(ids), ids, bm25)
            with self._lock:
                self._index = index
            return index
        finally:
            self._building = False
