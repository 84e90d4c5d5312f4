"""The LLM's reading of readers and articles: a match signal from its hidden states, trained on clicks.

An article's *reading* is the LLM's last hidden layer, mean-pooled over "category: title. abstract" (at most
READ_TOKENS tokens): computed once, when the article is stored. A small head, trained on impressions (each click
against its impression's non-clicks, a softmax: the objective of NRMS-style recommenders), maps readings into a
space where a reader is the attention-weighted mean of their history's readings, and an article's `match` to
them is its cosine to that mean, as (1 + cos) / 2 in [0, 1]. Several heads trained from different seeds are
averaged: one head's held-out AUC swings by two points from one epoch to the next on a few thousand impressions,
their mean does not.

The LLM's weights stay frozen: four heads are a few hundred thousand numbers, trained in a minute on two cores,
where an adapter of the same data takes hours (docs/BENCHMARKS.md has both). Serving reads it with numpy alone.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from config.settings import PACKAGED_LLM
from core.errors import InvalidInput
from core.records import Article

FORMAT = "newsrank-tower/1"
READ_TOKENS = 48
NEUTRAL = 0.5  # the match where a reading is missing: the reader's history has none, or the candidate


def reading_text(article: Article) -> str:
    return f"{article.category}: {article.text}" if article.category else article.text


class ArticleReader:
    """Mean-pooled last hidden states of a causal LM (bfloat16 on CPU), batched by length. `model`: a path, or
    the packaged LLM's name (converted into `cache_dir` at first use, llm/models.py). Loaded at first use."""

    def __init__(self, model: str, cache_dir: Path, threads: int | None = None, batch_size: int = 32) -> None:
        self.model = model
        self.cache_dir = cache_dir
        self.threads = threads
        self.batch_size = batch_size
        self._model: Any = None
        self._loading = threading.Lock()

    def _load(self) -> tuple[Any, Any]:
        with self._loading:
            if self._model is None:
                self._model = self._open()
        return self._model

    def _open(self) -> tuple[Any, Any]:
        import torch
        import transformers

        from llm.models import offline, resolve_llm

        offline()
        if self.threads:
            torch.set_num_threads(self.threads)
        path = resolve_llm(self.model, Path(self.cache_dir).expanduser())
        tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        tokenizer.padding_side = "right"
        return tokenizer, transformers.AutoModel.from_pretrained(path, dtype=torch.bfloat16).eval()

    def __call__(self, articles: Sequence[Article]) -> np.ndarray:
        return self.read([reading_text(a) for a in articles])

    def read(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        tokenizer, model = self._load()
        out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # little padding in a batch
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                enc = tokenizer([texts[i] for i in batch], return_tensors="pt", padding=True, truncation=True,
                                max_length=READ_TOKENS)  # fmt: skip
                hidden = model(**enc).last_hidden_state.float()
                mask = enc["attention_mask"].unsqueeze(-1).float()
                out[batch] = ((hidden * mask).sum(1) / mask.sum(1)).numpy()
        return out


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-9)


@dataclass(frozen=True)
class Tower:
    """Heads stacked on a first axis: `proj` (heads, k, d) and `bias` (heads, k) map a standardised reading
    into the match space; `attend` (heads, a, k), `attend_bias` (heads, a) and `query` (heads, a) weigh a
    reader's history items (additive attention)."""

    mean: np.ndarray
    scale: np.ndarray
    proj: np.ndarray
    bias: np.ndarray
    attend: np.ndarray
    attend_bias: np.ndarray
    query: np.ndarray
    card: dict

    def article_reader(self, cache_dir: Path, threads: int | None = None) -> ArticleReader:
        """What reads articles for these heads: the base model they were trained on (the packaged LLM)."""
        return ArticleReader(self.card.get("base_model", PACKAGED_LLM), cache_dir, threads)

    def embed(self, readings: np.ndarray) -> np.ndarray:
        """(heads, n, k): each reading in each head's space, unit length."""
        x = (np.asarray(readings, dtype=np.float32) - self.mean) / self.scale
        return _normalise(np.einsum("hkd,nd->hnk", self.proj, x) + self.bias[:, None, :])

    def reader(self, history: np.ndarray) -> np.ndarray:
        """(heads, k): a reader from their history's readings, unit length."""
        items = self.embed(history)
        logits = np.einsum("ha,hna->hn", self.query, np.tanh(np.einsum("hak,hnk->hna", self.attend, items)
                                                                + self.attend_bias[:, None, :]))  # fmt: skip
        weights = np.exp(logits - logits.max(axis=1, keepdims=True))
        weights /= weights.sum(axis=1, keepdims=True)
        return _normalise(np.einsum("hn,hnk->hk", weights, items))

    def match(self, history: Sequence[np.ndarray | None], candidates: Sequence[np.ndarray | None]) -> list[float]:
        """Each candidate's match to the reader, (1 + mean cosine over heads) / 2; NEUTRAL without readings (or
        with readings of another model's size: articles stored before the tower's base model changed)."""
        size = self.mean.shape[0]
        known = [h for h in history if h is not None and h.shape == (size,)]
        out = [NEUTRAL] * len(candidates)
        rows = [i for i, c in enumerate(candidates) if c is not None and c.shape == (size,)]
        if not known or not rows:
            return out
        cosines = np.einsum("hnk,hk->n", self.embed(np.stack([candidates[i] for i in rows])),
                            self.reader(np.stack(known))) / len(self.proj)  # fmt: skip
        for i, value in zip(rows, cosines, strict=True):
            out[i] = float(np.clip((1.0 + value) / 2.0, 0.0, 1.0))
        return out

    # -- files ----------------------------------------------------------------------------------------------
    def save(self, path: Path) -> Path:
        from safetensors.numpy import save_file

        arrays = {name: np.ascontiguousarray(getattr(self, name), dtype=np.float32) for name in _ARRAYS}
        save_file(arrays, str(path), metadata={"format": FORMAT, "card": json.dumps(self.card)})
        path.chmod(0o644)  # a model file to ship and share, not a secret
        return path

    @classmethod
    def load(cls, path: Path) -> Tower:
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="numpy") as f:
                meta = f.metadata() or {}
                arrays = {name: f.get_tensor(name) for name in _ARRAYS}
        except (OSError, KeyError, ValueError, SafetensorError) as exc:
            raise InvalidInput(f"{path} is not a tower file: {exc}") from exc
        if meta.get("format") != FORMAT:
            raise InvalidInput(f"{path} is a {meta.get('format')!r} file; this version reads {FORMAT}")
        return cls(**arrays, card=json.loads(meta.get("card", "{}")))


_ARRAYS = ("mean", "scale", "proj", "bias", "attend", "attend_bias", "query")


# -- training -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Impression:
    """What a head learns from: the readings of a reader's history and of an impression's candidates, and
    which candidates were clicked."""

    history: np.ndarray
    candidates: np.ndarray
    labels: Sequence[int]


def train(
    impressions: Sequence[Impression],
    heads: int = 4,
    epochs: int = 2,
    size: int = 128,
    attention: int = 64,
    lr: float = 5e-4,
    weight_decay: float = 1e-4,
    seed: int = 0,
    progress: bool = True,
    weights: Sequence[float] | None = None,
    **card: Any,
) -> Tower:
    """Heads trained on each click against its impression's non-clicks (softmax cross-entropy), one impression a
    step, AdamW. Readings are standardised by their mean and spread over every impression's items. `weights`: each
    impression's weight in the loss (core.metrics.capped_weights: no reader or client steers the heads), 1 if
    None."""
    import torch
    from tqdm import tqdm

    weighted = [(i, w) for i, w in zip(impressions, weights or [1.0] * len(impressions), strict=True)
                if len(i.history) and any(i.labels) and not all(i.labels)]  # fmt: skip
    usable = [i for i, _ in weighted]
    if not usable:
        raise InvalidInput("training a tower needs impressions with a history, a click and a non-click")
    pooled = np.concatenate([np.concatenate([i.history, i.candidates]) for i in usable])
    mean, scale = pooled.mean(axis=0), pooled.std(axis=0) + 1e-6
    data = [(torch.tensor((i.history - mean) / scale, dtype=torch.float32),
             torch.tensor((i.candidates - mean) / scale, dtype=torch.float32),
             torch.tensor(list(i.labels), dtype=torch.bool)) for i in usable]  # fmt: skip
    mean_weight = float(np.mean([w for _, w in weighted]))
    loss_weight = [w / mean_weight for _, w in weighted]
    dim = pooled.shape[1]
    trained = []
    bar = tqdm(total=heads * epochs * len(data), desc="train tower", unit=" impressions", disable=not progress)
    for head in range(heads):
        torch.manual_seed(seed + head)
        order = np.random.default_rng(seed + head)
        proj, attend = torch.nn.Linear(dim, size), torch.nn.Linear(size, attention)
        query = torch.nn.Linear(attention, 1, bias=False)
        temperature = torch.nn.Parameter(torch.tensor(10.0))
        params = [*proj.parameters(), *attend.parameters(), *query.parameters(), temperature]
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        for _ in range(epochs):
            for j in order.permutation(len(data)):
                history, candidates, labels = data[j]
                items = torch.nn.functional.normalize(proj(history), dim=-1)
                weights = torch.softmax(query(torch.tanh(attend(items))).squeeze(-1), 0)
                reader = torch.nn.functional.normalize(weights @ items, dim=-1)
                scores = temperature * (torch.nn.functional.normalize(proj(candidates), dim=-1) @ reader)
                clicked, others = scores[labels], scores[~labels]
                logits = torch.cat([clicked[:, None], others[None, :].expand(len(clicked), -1)], dim=1)
                loss = torch.nn.functional.cross_entropy(logits, torch.zeros(len(clicked), dtype=torch.long))
                loss = loss * loss_weight[j]
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                bar.update(1)
        trained.append((proj, attend, query))
    bar.close()

    def stack(get: Any) -> np.ndarray:
        return np.stack([get(*h).detach().numpy() for h in trained])

    return Tower(
        mean=mean.astype(np.float32), scale=scale.astype(np.float32),
        proj=stack(lambda p, a, q: p.weight), bias=stack(lambda p, a, q: p.bias),
        attend=stack(lambda p, a, q: a.weight), attend_bias=stack(lambda p, a, q: a.bias),
        query=stack(lambda p, a, q: q.weight[0]),
        card={"impressions": len(usable), "heads": heads, "epochs": epochs, "size": size, "lr": lr, **card},
    )  # fmt: skip
