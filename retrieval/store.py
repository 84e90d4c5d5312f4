"""The article store: Chroma holds each article's embedding and metadata.

Embedded by default (PersistentClient under the data dir); a Chroma server when a URL is configured.
Times are stored as epoch seconds because Chroma metadata values must be str, int, float or bool.

Every feed asks the same few things (how many articles there are, the newest ones, the articles a reader read):
those reads are kept for `cache_seconds` (2 s by default; 0 turns it off). What this process writes clears them
at once; what another instance writes shows within that time.
"""

from __future__ import annotations

import base64
import functools
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import numpy as np

from core.errors import InvalidInput, StoreUnavailable
from core.records import Article, Hit
from retrieval import stories
from retrieval.embed import Embedder
from retrieval.keywords import KeywordIndex

UPSERT_BATCH = 256
READING = "reading"  # the metadata key of an article's reading by the LLM (llm/tower.py), when a reader is set
CACHE_SECONDS = 2.0
CACHE_ENTRIES = 50_000
T = TypeVar("T")


def chroma_metadata(article: Article) -> dict[str, Any]:
    return {
        "title": article.title,
        "abstract": article.abstract,
        "category": article.category,
        "subcategory": article.subcategory,
        "url": article.url,
        "source": article.source,
        "published_at": float(article.published_at),
        "story": article.story or article.id,
    }


def pack_reading(vector: np.ndarray) -> str:
    """An article's reading by the LLM (llm/tower.py) as Chroma metadata can hold it (a string): float16, base64."""
    return base64.b64encode(np.asarray(vector, dtype=np.float16).tobytes()).decode("ascii")


def unpack_reading(text: object) -> np.ndarray | None:
    if not isinstance(text, str) or not text:
        return None
    return np.frombuffer(base64.b64decode(text), dtype=np.float16).astype(np.float32)


def article_from_chroma(article_id: str, meta: dict[str, Any]) -> Article:
    return Article(
        id=article_id,
        title=str(meta.get("title", "")),
        abstract=str(meta.get("abstract", "")),
        category=str(meta.get("category", "")),
        subcategory=str(meta.get("subcategory", "")),
        url=str(meta.get("url", "")),
        source=str(meta.get("source", "")),
        published_at=float(meta.get("published_at", 0.0)),
        story=str(meta.get("story") or article_id),
    )


def chroma_client(chroma_dir: Path, url: str | None = None) -> Any:
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    options = ChromaSettings(anonymized_telemetry=False)
    if url:
        parsed = urlparse(url)
        if not parsed.hostname:
            raise InvalidInput(f"bad Chroma URL {url!r}; expected e.g. http://localhost:8000")
        return chromadb.HttpClient(
            host=parsed.hostname,
            port=parsed.port or (443 if parsed.scheme == "https" else 8000),
            ssl=parsed.scheme == "https",
            settings=options,
        )
    chroma_dir.mkdir(parents=True, exist_ok=True)
    return chromadb.PersistentClient(path=str(chroma_dir), settings=options)


def where_clause(
    since: float | None = None,
    categories: Sequence[str] | None = None,
    exclude_categories: Sequence[str] | None = None,
) -> dict[str, Any] | None:
    conditions: list[dict[str, Any]] = []
    if since is not None:
        conditions.append({"published_at": {"$gte": float(since)}})
    if categories:
        conditions.append({"category": {"$in": list(categories)}})
    if exclude_categories:
        conditions.append({"category": {"$nin": list(exclude_categories)}})
    if not conditions:
        return None
    return conditions[0] if len(conditions) == 1 else {"$and": conditions}


def _answering(method: Callable[..., T]) -> Callable[..., T]:
    """A Chroma server that does not answer is StoreUnavailable (HTTP 503), not a bug (500)."""

    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> T:
        import httpx

        try:
            return method(self, *args, **kwargs)
        except (httpx.TransportError, ConnectionError) as exc:
            raise StoreUnavailable(f"the article store did not answer: {exc}") from None

    return call


class ChromaArticleStore:
    """core.stores.ArticleStore on a Chroma collection."""

    def __init__(
        self,
        client: Any,
        embedder: Embedder,
        collection: str = "articles",
        cache_seconds: float = CACHE_SECONDS,
        find_stories: bool = True,
        reader: Callable[[Sequence[Article]], np.ndarray] | None = None,
    ) -> None:
        self.embedder = embedder
        self.reader = reader  # each article's reading by the LLM, stored with it (llm/tower.ArticleReader)
        self.find_stories = find_stories  # each new article joins the story of a copy already stored
        self._keywords: KeywordIndex | None = None  # built at the first keyword search
        self.collection = client.get_or_create_collection(
            name=collection, embedding_function=embedder, configuration={"hnsw": {"space": "cosine"}}
        )
        self.cache_seconds = cache_seconds
        self._cache: dict[Any, tuple[float, Any]] = {}  # key → (when it expires, value)
        self._cache_lock = threading.Lock()

    def _cached(self, key: Any) -> Any:
        with self._cache_lock:
            expires, value = self._cache.get(key, (0.0, None))
        return value if expires > time.monotonic() else None

    def _keep(self, key: Any, value: Any) -> None:
        if self.cache_seconds > 0:
            with self._cache_lock:
                if len(self._cache) >= CACHE_ENTRIES:
                    self._cache.clear()
                self._cache[key] = (time.monotonic() + self.cache_seconds, value)

    def _forget(self) -> None:
        with self._cache_lock:
            self._cache.clear()

    @_answering
    def count(self) -> int:
        count = self._cached("count")
        if count is None:
            count = self.collection.count()
            self._keep("count", count)
        return count

    @_answering
    def upsert(self, articles: Iterable[Article], progress: Any = None) -> int:
        """Insert or replace by id (so ingesting a file twice changes nothing). Returns how many were written."""
        written = 0
        for batch in _batches(articles, UPSERT_BATCH):
            # the last version of an id within one batch wins, as it would across batches
            unique = list({a.id: a for a in batch}.values())
            vectors = self.embedder.encode([a.text for a in unique])
            if self.find_stories:
                unique = self._with_stories(unique, vectors)
            metadatas = [chroma_metadata(a) for a in unique]
            if self.reader is not None:
                for meta, reading in zip(metadatas, self.reader(unique), strict=True):
                    meta[READING] = pack_reading(reading)
            self.collection.upsert(
                ids=[a.id for a in unique], documents=[a.text for a in unique], embeddings=vectors, metadatas=metadatas
            )
            written += len(unique)
            self._forget()
            if progress is not None:
                progress.update(len(batch))
        return written

    def _with_stories(self, articles: list[Article], vectors: np.ndarray) -> list[Article]:
        """The articles with their stories (retrieval/stories.py): an article stored before keeps its own; a new
        one joins that of its best-matching copy among its nearest stored neighbours of the time window."""
        kept = self.collection.get(ids=[a.id for a in articles], include=["metadatas"])
        known = {i: (m or {}).get("story") for i, m in zip(kept["ids"], kept["metadatas"], strict=True)}
        total = self.collection.count()
        neighbours: list[list[tuple[Article, float]]] = [[] for _ in articles]
        if total:
            times = [a.published_at for a in articles]
            window = stories.WINDOW_DAYS * 86400
            got = self.collection.query(
                query_embeddings=np.asarray(vectors, dtype=np.float32),
                n_results=min(total, stories.NEIGHBOURS),
                where={
                    "$and": [
                        {"published_at": {"$gte": min(times) - window}},
                        {"published_at": {"$lte": max(times) + window}},
                    ]
                },
                include=["metadatas", "distances"],
            )
            neighbours = [
                [(article_from_chroma(i, m or {}), 1.0 - d) for i, m, d in zip(ids, metas, dists, strict=True)]
                for ids, metas, dists in zip(got["ids"], got["metadatas"], got["distances"], strict=True)
            ]
        found = stories.assign([replace(a, story=known.get(a.id) or a.story) for a in articles], vectors, neighbours)
        return [replace(a, story=known.get(a.id) or s) for a, s in zip(articles, found, strict=True)]

    @_answering
    def texts(self) -> tuple[list[str], list[str]]:
        """Every article's id and text (what the keyword index is built from)."""
        got = self.collection.get(include=["documents"])
        return list(got["ids"]), [d or "" for d in got["documents"]]

    def keyword_search(self, query: str, k: int) -> list[tuple[str, float]]:
        """The articles whose words best match a query (BM25), ids and scores, best first."""
        if self._keywords is None:
            self._keywords = KeywordIndex(self.texts, self.count)
        return self._keywords.search(query, k)

    @_answering
    def story(self, story_id: str) -> list[Hit]:
        """The articles of one story, oldest first."""
        got = self.collection.get(where={"story": story_id}, include=["metadatas", "embeddings"])
        hits = _hits(got["ids"], got["metadatas"], got["embeddings"])
        return sorted(hits.values(), key=lambda h: (h.article.published_at, h.article.id))

    @_answering
    def story_sizes(self, story_ids: Sequence[str]) -> dict[str, int]:
        """How many articles (copies, sources) each of these stories holds."""
        wanted = list(dict.fromkeys(story_ids))
        sizes = {i: n for i in wanted if (n := self._cached(("story", i))) is not None}  # every feed asks
        missing = [i for i in wanted if i not in sizes]
        if missing:
            got = self.collection.get(where={"story": {"$in": missing}}, include=["metadatas"])
            counted = dict.fromkeys(missing, 0)
            for meta in got["metadatas"]:
                story = (meta or {}).get("story", "")
                counted[story] = counted.get(story, 0) + 1
            for story, n in counted.items():
                self._keep(("story", story), n)
            sizes.update(counted)
        return {i: sizes[i] for i in wanted if sizes.get(i)}

    @_answering
    def get(self, ids: Sequence[str]) -> dict[str, Hit]:
        """The stored articles among `ids`, keyed by id; unknown ids are simply absent."""
        if not ids:
            return {}
        wanted = list(dict.fromkeys(ids))
        found = {i: hit for i in wanted if (hit := self._cached(("article", i))) is not None}
        missing = [i for i in wanted if i not in found]
        if missing:
            got = self.collection.get(ids=missing, include=["metadatas", "embeddings"])
            fetched = _hits(got["ids"], got["metadatas"], got["embeddings"])
            for article_id, hit in fetched.items():
                self._keep(("article", article_id), hit)
            found.update(fetched)
        return {i: found[i] for i in wanted if i in found}

    @_answering
    def known(self, ids: Sequence[str]) -> set[str]:
        if not ids:
            return set()
        return set(self.collection.get(ids=list(dict.fromkeys(ids)), include=[])["ids"])

    @_answering
    def delete(self, ids: Sequence[str]) -> None:
        if ids:
            self.collection.delete(ids=list(ids))
            self._forget()

    @_answering
    def search(
        self,
        *,
        text: str | None = None,
        vector: np.ndarray | None = None,
        k: int = 20,
        since: float | None = None,
        categories: Sequence[str] | None = None,
        exclude_categories: Sequence[str] | None = None,
        exclude_ids: Iterable[str] = (),
    ) -> list[Hit]:
        """Nearest articles to a text or a vector, best first, with filters."""
        if (text is None) == (vector is None):
            raise InvalidInput("search needs exactly one of text or vector")
        if vector is None:
            vector = self.embedder.encode([text])[0]
        exclude = set(exclude_ids)
        total = self.count()
        if total == 0 or k <= 0:
            return []
        # Chroma filters by metadata only: over-fetch to make up for excluded ids. The ids and distances alone,
        # then the articles through `get` (cached): Chroma reading the metadata of every hit was most of a
        # feed's time (15 of 19 ms on the demo corpus)
        got = self.collection.query(
            query_embeddings=[np.asarray(vector, dtype=np.float32)],
            n_results=min(total, k + len(exclude)),
            where=where_clause(since, categories, exclude_categories),
            include=["distances"],
        )
        near = [(i, d) for i, d in zip(got["ids"][0], got["distances"][0], strict=True) if i not in exclude][:k]
        stored = self.get([i for i, _ in near])
        return [replace(stored[i], similarity=float(1.0 - d)) for i, d in near if i in stored]

    @_answering
    def recent(
        self,
        *,
        since: float,
        k: int,
        categories: Sequence[str] | None = None,
        exclude_categories: Sequence[str] | None = None,
        exclude_ids: Iterable[str] = (),
    ) -> list[Hit]:
        """The newest articles published since a time, newest first. Only their metadata is read to choose
        them; vectors are read for the chosen k alone (a window can hold many thousands of articles)."""
        exclude = set(exclude_ids)
        # the window's articles, newest first: read once for every reader (the window's start moves with the
        # clock, so what was read for an earlier start is filtered down to this one)
        key = ("recent", tuple(categories or ()), tuple(exclude_categories or ()))
        window = self._cached(key)
        if window is None or window[0] > since:
            got = self.collection.get(where=where_clause(since, categories, exclude_categories), include=["metadatas"])
            ordered = sorted(
                ((float((meta or {}).get("published_at", 0.0)), article_id)
                 for article_id, meta in zip(got["ids"], got["metadatas"], strict=True)),
                key=lambda t: (-t[0], t[1]),
            )  # fmt: skip
            window = (since, ordered)
            self._keep(key, window)
        newest = [(t, a) for t, a in window[1] if t >= since and a not in exclude][:k]
        chosen = self.get([article_id for _, article_id in newest])
        return [chosen[article_id] for _, article_id in newest if article_id in chosen]


def _hits(ids, metadatas, embeddings, distances=None) -> dict[str, Hit]:
    embeddings = [] if embeddings is None else embeddings
    return {
        article_id: Hit(
            article=article_from_chroma(article_id, meta or {}),
            embedding=np.asarray(embeddings[i], dtype=np.float32),
            similarity=None if distances is None else float(1.0 - distances[i]),
            reading=unpack_reading((meta or {}).get(READING)),
        )
        for i, (article_id, meta) in enumerate(zip(ids, metadatas, strict=True))
    }


def _batches(items: Iterable[Article], size: int) -> Iterator[list[Article]]:
    batch: list[Article] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
