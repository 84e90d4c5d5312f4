"""The embedded default backend: a Hugging Face causal LM on the CPU, PEFT adapters per request; bfloat16 where
the CPU multiplies it in hardware (AMX), float32 elsewhere. The adapters served most recently are merged into copies
of the decoder's weights, so that serving one costs what the base model costs.

Scoring computes each distinct prefix once and reuses its KV cache for every candidate suffix, in batches that
may mix prefixes: the candidates of several readers (calls merged by the MicroBatcher) share forward passes. One
reader's candidates go in one packed sequence after their prefix, its attention computed span by span.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import threading
from collections import OrderedDict, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import InvalidInput, NotFound, require
from core.llm import ANSWER_NO, ANSWER_YES, GenerateRequest, Generation, ScoreRequest
from llm.models import offline, resolve_llm

# the attention implementation the backend's model runs (`block_attention`), and its suffixes' group size
BLOCK_ATTENTION = "newsrank_blocks"
GROUP_TOKENS = 64


def answer_margins(
    model: Any,
    tokenizer: Any,
    suffixes: Sequence[str],
    cache: Any,
    n_prefix: int,
    answer_ids: tuple[int, int],
    prefix_mask: Any = None,
) -> Any:
    """logit(Yes) - logit(No) at the end of each suffix, read after a prefix already in `cache` (one row per
    suffix; None for no prefix). Differentiable: training calls it too, so the trained quantity is exactly the
    served one, σ(margin) = P(Yes).

    `prefix_mask` (rows × n_prefix, 0 on left padding) lets the rows continue different prefixes of different
    lengths, cached together; each row's suffix then starts at its own prefix length. None: every row's prefix
    is all n_prefix tokens."""
    torch = require("torch", "pip install torch==2.13.0")
    tokenizer.padding_side = "right"  # each row's logits are read at its own last real token
    batch = tokenizer(list(suffixes), add_special_tokens=False, padding=True, return_tensors="pt").to(model.device)
    rows, width = batch.input_ids.shape
    if prefix_mask is None:
        prefix_mask = torch.ones(rows, n_prefix, dtype=batch.attention_mask.dtype, device=model.device)
    mask = torch.cat([prefix_mask, batch.attention_mask], 1)
    positions = prefix_mask.sum(1, keepdim=True) + torch.arange(width, device=model.device).unsqueeze(0)
    last = batch.attention_mask.sum(1) - 1
    keep = torch.unique(last)  # the vocabulary projection only at the positions where some row's answer is read
    logits = model(
        input_ids=batch.input_ids,
        attention_mask=mask,
        position_ids=positions,
        past_key_values=cache,
        use_cache=cache is not None,
        logits_to_keep=keep,
    ).logits
    answer = logits[torch.arange(rows, device=model.device), torch.searchsorted(keep, last)]
    yes, no = answer_ids
    return answer[:, yes] - answer[:, no]


def packed_margins(
    model: Any, tokenizer: Any, blocks: Sequence[tuple[str, Sequence[str]]], answer_ids: tuple[int, int]
) -> Any:
    """logit(Yes) - logit(No) of every suffix after its block's prefix, from one packed sequence: each block's
    prefix, then its suffixes one after another. Each suffix sees its own prefix and its own tokens only, and its
    positions continue its prefix's, so each margin is the one it would get alone (tests check this). No copy of
    the prefix's cache per candidate and no padding: a candidate costs only its own tokens, which is what makes
    training on clicks cheap. Several blocks (one reader's profiles at different times) make one sequence, one
    example in differentially private training. Differentiable, like `answer_margins`.

    A model with `BLOCK_ATTENTION` computes attention span by span (`attention_spans`); any other, with one mask
    over the whole sequence."""
    torch = require("torch", "pip install torch==2.13.0")
    ids: list[int] = []
    positions: list[int] = []
    layout: list[tuple[int, int, list[tuple[int, int]]]] = []  # per block: its prefix's span, its suffixes' spans
    for prefix, suffixes in blocks:
        head = tokenizer(prefix, add_special_tokens=False).input_ids
        parts = [tokenizer(s, add_special_tokens=False).input_ids for s in suffixes]
        if not parts or not all(parts):
            raise InvalidInput("packed scoring needs at least one suffix per prefix, none of them empty")
        start = len(ids)
        ids += head
        positions += range(len(head))
        spans = []
        for part in parts:
            spans.append((len(ids), len(ids) + len(part)))
            ids += part
            positions += range(len(head), len(head) + len(part))
        layout.append((start, start + len(head), spans))
    if not layout:
        raise InvalidInput("packed scoring needs at least one suffix")
    ends = [end - 1 for _, _, spans in layout for _, end in spans]  # where each answer is read
    weight = next(model.parameters())  # a wrapped model (Opacus's) may not expose .dtype and .device
    dtype, device = weight.dtype, weight.device
    attention: dict[str, Any] = {}
    if getattr(getattr(model, "config", None), "_attn_implementation", None) == BLOCK_ATTENTION:
        attention["attention_spans"] = attention_spans(layout, dtype, device)
    else:
        attention["attention_mask"] = packed_mask(layout, len(ids), dtype)[None, None].to(device)
    logits = model(
        input_ids=torch.tensor([ids], device=device),
        position_ids=torch.tensor([positions], device=device),
        logits_to_keep=torch.tensor(ends, device=device),  # the vocabulary projection only where answers are read
        use_cache=False,
        **attention,
    ).logits[0]
    yes, no = answer_ids
    return logits[:, yes] - logits[:, no]


Layout = Sequence[tuple[int, int, Sequence[tuple[int, int]]]]  # per block: (prefix start, end), suffix spans


def packed_calls(
    blocks: Sequence[tuple[str, Sequence[int]]], size: int, most: int
) -> list[list[tuple[str, Sequence[int]]]]:
    """Blocks of (prefix, rows) grouped into calls of at most `size` rows and `most` blocks, in order: a block that
    does not fit in the call being filled starts the next one, and a block larger than `size` is cut into pieces
    that each repeat its prefix. Bounds one packed sequence (and its attention) however many readers and
    candidates come."""
    calls: list[list[tuple[str, Sequence[int]]]] = [[]]
    room = size
    for prefix, rows in blocks:
        for start in range(0, len(rows), size):
            piece = rows[start : start + size]
            if len(piece) > room or len(calls[-1]) == most:
                calls.append([])
                room = size
            calls[-1].append((prefix, piece))
            room -= len(piece)
    return [call for call in calls if call]


def packed_mask(layout: Layout, size: int, dtype: Any) -> Any:
    """The additive mask of a packed sequence: a prefix token sees its prefix causally, a suffix token its
    prefix and its own suffix causally, nothing of other blocks."""
    torch = require("torch", "pip install torch==2.13.0")
    visible = torch.zeros(size, size, dtype=torch.bool)
    for start, end, spans in layout:
        visible[start:end, start:end] = True
        for first, last in spans:
            visible[first:last, start:end] = True
            visible[first:last, first:last] = True
    visible &= torch.ones(size, size, dtype=torch.bool).tril()
    return torch.zeros(size, size, dtype=dtype).masked_fill(~visible, torch.finfo(dtype).min)


@dataclass(frozen=True)
class Span:
    """Queries [start, end) of a packed sequence, attending causally to themselves (`mask` None: a prefix), or
    to their prefix [prefix_start, prefix_end) and to themselves under `mask` (a group of suffixes)."""

    start: int
    end: int
    prefix_start: int = 0
    prefix_end: int = 0
    mask: Any = None


def attention_spans(layout: Layout, dtype: Any, device: Any, group_tokens: int = GROUP_TOKENS) -> list[Span]:
    """A packed sequence cut for `block_attention`, in the sequence's order: each prefix, then its suffixes in
    groups of about `group_tokens` tokens (small enough that little of a group's own square is masked, large
    enough that each SDPA call has work to do)."""
    torch = require("torch", "pip install torch==2.13.0")
    spans: list[Span] = []
    for start, end, suffixes in layout:
        spans.append(Span(start, end))
        group: list[tuple[int, int]] = []
        for i, suffix in enumerate(suffixes):
            group.append(suffix)
            if group[-1][1] - group[0][0] < group_tokens and i + 1 < len(suffixes):
                continue
            first, size = group[0][0], group[-1][1] - group[0][0]
            own = torch.tensor([g for g, (a, b) in enumerate(group) for _ in range(a, b)])
            visible = torch.ones(size, size, dtype=torch.bool).tril() & (own[None, :] == own[:, None])
            mask = torch.zeros(size, end - start + size, dtype=dtype)
            mask[:, end - start :].masked_fill_(~visible, torch.finfo(dtype).min)
            spans.append(Span(first, first + size, start, end, mask[None, None].to(device)))
            group = []
    return spans


def block_attention(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    attention_spans: Sequence[Span] | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """transformers' attention, span by span over a packed sequence (`attention_spans`): a reader's candidates
    attend to the prefix and to themselves, not to every token before them as one masked call over the whole
    sequence computes; 1.1x the scores a second (docs/BENCHMARKS.md). Every other call (generation, cached
    prefixes) is transformers' SDPA attention, unchanged."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if attention_spans is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    torch = require("torch", "pip install torch==2.13.0")
    sdpa = torch.nn.functional.scaled_dot_product_attention
    options = {"dropout_p": dropout, "scale": scaling, "enable_gqa": getattr(module, "num_key_value_groups", 1) > 1}
    out = []
    for s in attention_spans:
        q, k, v = query[:, :, s.start : s.end], key[:, :, s.start : s.end], value[:, :, s.start : s.end]
        if s.mask is None:
            out.append(sdpa(q, k, v, is_causal=True, **options))
        else:
            k = torch.cat([key[:, :, s.prefix_start : s.prefix_end], k], 2)
            v = torch.cat([value[:, :, s.prefix_start : s.prefix_end], v], 2)
            out.append(sdpa(q, k, v, attn_mask=s.mask, **options))
    return torch.cat(out, 2).transpose(1, 2).contiguous(), None


def weights_dtype(name: str = "auto") -> str:
    """`auto`: bfloat16 on CPUs with AMX tiles, where the packaged model scores about 2.9x the candidates a
    second of float32 (docs/BENCHMARKS.md); float32 elsewhere (without AMX, bfloat16 is emulated and slower)."""
    if name != "auto":
        return name
    torch = require("torch", "pip install torch==2.13.0")
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    return "bfloat16" if amx() and torch.ops.mkldnn._is_mkldnn_bf16_supported() else "float32"


def float32_head(model: Any) -> None:
    """Give a bfloat16 model a float32 vocabulary projection of its own. A margin read from bfloat16 logits
    has 8 significant bits: a third of a reader's candidates came out tied. The head is untied from the input
    embeddings (which stay bfloat16) and costs one float32 product per answer read."""
    torch = require("torch", "pip install torch==2.13.0")

    class Float32Head(torch.nn.Linear):
        def forward(self, hidden: Any) -> Any:
            return torch.nn.functional.linear(hidden.to(self.weight.dtype), self.weight)

    weight = model.get_output_embeddings().weight.detach()
    head = Float32Head(weight.shape[1], weight.shape[0], bias=False)
    head.weight = torch.nn.Parameter(weight.float(), requires_grad=False)
    model.set_output_embeddings(head)
    model.config.tie_word_embeddings = False  # so that nothing ties it back to the bfloat16 embeddings


def attention_implementation(attention: str) -> str:
    """transformers' attention implementation for a packed sequence's attention: `blocks` registers
    `block_attention` (its masks those of SDPA) and names it; `masked` is SDPA with one mask."""
    if attention != "blocks":
        return "sdpa"
    transformers = require("transformers", "pip install 'transformers>=5.16.1,<5.20'")
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    transformers.AttentionInterface.register(BLOCK_ATTENTION, block_attention)
    transformers.AttentionMaskInterface.register(BLOCK_ATTENTION, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    return BLOCK_ATTENTION


def prepack_linears(model: Any) -> None:
    """Give a bfloat16 model's decoder linear layers weights in oneDNN's blocked layout, made once: in eager
    mode oneDNN reorders each weight at every call (5 % of bfloat16 scoring, docs/BENCHMARKS.md). The layers stay
    `nn.Linear`s with their weights, so PEFT can wrap and merge them; call again after weights change (a merge).
    float32 weights, and a torch without these oneDNN operators, are left as they are."""
    torch = require("torch", "pip install torch==2.13.0")
    mkldnn = torch.ops.mkldnn
    if not (hasattr(mkldnn, "_reorder_linear_weight") and hasattr(mkldnn, "_linear_pointwise")):
        return
    prepacked = _prepacked_linear_class()
    for module in model.get_decoder().modules():
        if isinstance(module, torch.nn.Linear) and module.weight.dtype == torch.bfloat16:
            module.__class__ = prepacked
            module.pack()


@functools.cache
def _prepacked_linear_class() -> Any:
    torch = require("torch", "pip install torch==2.13.0")

    class PrepackedLinear(torch.nn.Linear):
        """nn.Linear computed from a copy of its weight that oneDNN reordered once (`prepack_linears`)."""

        def pack(self) -> None:
            self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight.detach(), None)

        def forward(self, x: Any) -> Any:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    return PrepackedLinear


def answer_token_ids(tokenizer: Any) -> tuple[int, int]:
    """The first tokens of "Yes" and "No": the answer is read from these two logits."""
    return tuple(tokenizer(word, add_special_tokens=False).input_ids[0] for word in (ANSWER_YES, ANSWER_NO))


class TransformersBackend:
    name = "transformers"
    supports_adapters = True

    def __init__(
        self,
        model: str,
        cache_dir: Path,
        batch_size: int = 16,
        threads: int | None = None,
        dtype: str = "float32",
        merged_adapters: int = 2,
        attention: str = "blocks",
    ) -> None:
        self.model = model
        self.cache_dir = cache_dir
        self.batch_size = batch_size
        self.pack_readers = True  # False: several readers' rows over copied prefix caches (benchmarks compare)
        self.threads = threads
        self.dtype = weights_dtype(dtype)  # the resolved name: float32 or bfloat16
        self.adapters: dict[str, str] = {}
        self.merged_adapters = merged_adapters  # how many merged copies to keep (0: PEFT's LoRA products only)
        if attention not in ("blocks", "masked"):
            raise InvalidInput(f"unknown attention {attention!r}; expected blocks or masked")
        self.attention = attention  # a packed sequence's attention: span by span, or one mask over all of it
        self._merged: OrderedDict[str, Any] = OrderedDict()  # adapter name -> merged model, least recent first
        # one forward pass at a time: adapter switching and torch's thread pool are process-wide
        self._lock = threading.RLock()
        self._loaded: tuple[Any, Any] | None = None

    # -- loading ------------------------------------------------------------------------------------------
    def _load(self) -> tuple[Any, Any]:
        with self._lock:
            if self._loaded is None:
                offline()
                torch = require("torch", "pip install torch==2.13.0")
                transformers = require("transformers", "pip install 'transformers>=5.16.1,<5.20'")
                if self.threads:
                    torch.set_num_threads(self.threads)
                path = resolve_llm(self.model, self.cache_dir)
                tokenizer = transformers.AutoTokenizer.from_pretrained(path)
                if tokenizer.pad_token_id is None:
                    tokenizer.pad_token = tokenizer.eos_token
                model = transformers.AutoModelForCausalLM.from_pretrained(
                    path, dtype=getattr(torch, self.dtype), attn_implementation=attention_implementation(self.attention)
                )
                if self.dtype != "float32":
                    float32_head(model)
                    prepack_linears(model)
                model.eval()
                self._loaded = (tokenizer, model)
                self._answer_ids = answer_token_ids(tokenizer)
            return self._loaded

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)

    def counters(self) -> dict[str, float]:
        return {}  # what it does is counted by the wrappers around it (MeteredBackend, MicroBatcher)

    def warm(self) -> None:
        self._load()

    @property
    def tokenizer(self) -> Any:
        return self._load()[0]

    @property
    def network(self) -> Any:
        return self._load()[1]

    def load_adapter(self, name: str, path: str) -> None:
        """Load (or replace) a PEFT LoRA adapter under a name that requests can select."""
        peft = require("peft", "pip install peft")
        with self._lock:
            tokenizer, model = self._load()
            if not isinstance(model, peft.PeftModel):
                model = peft.PeftModel.from_pretrained(model, path, adapter_name=name)
                model.eval()
            else:
                if name in model.peft_config:
                    model.delete_adapter(name)
                model.load_adapter(path, adapter_name=name)
            self._loaded = (tokenizer, model)
            self.adapters[name] = path
            self._merged.pop(name, None)  # a replaced adapter is merged again when next used

    def merged(self) -> list[str]:
        """The adapters served from merged copies of the weights, least recently used first."""
        return list(self._merged)

    def _merged_model(self, name: str) -> Any:
        """The model with adapter `name` added into a copy of the decoder's weights. PEFT adds each adapted
        layer's low-rank products at every token: with the packaged model's seven adapted projections a layer,
        bfloat16 scoring ran at two thirds of the base model's rate; merged, at the base model's (the scores
        within 0.005 of PEFT's, docs/BENCHMARKS.md). The copies share the embeddings and the vocabulary
        projection; past `merged_adapters` copies the least recently used is dropped."""
        if name in self._merged:
            self._merged.move_to_end(name)
            return self._merged[name]
        peft_model = self.network
        shared = (peft_model.get_input_embeddings(), peft_model.get_output_embeddings())
        unadapted = [m for m in shared if not type(m).__module__.startswith("peft")]  # merging leaves these alone
        packed = [m.packed for m in peft_model.modules() if hasattr(m, "packed")]  # opaque: packed anew below
        twin = copy.deepcopy(peft_model, memo={id(m): m for m in [*unadapted, *packed]})
        merged = twin.merge_and_unload(adapter_names=[name])
        merged.eval()
        prepack_linears(merged)  # the merge changed the weights the copy's packed ones were made from
        self._merged[name] = merged
        while len(self._merged) > self.merged_adapters:
            self._merged.popitem(last=False)
        return merged

    @contextlib.contextmanager
    def _adapter(self, name: str | None) -> Iterator[Any]:
        model = self.network
        if name is None:
            if hasattr(model, "disable_adapter"):
                with model.disable_adapter():
                    yield model
            else:
                yield model
            return
        if name not in self.adapters:
            raise NotFound(f"adapter {name!r} is not loaded; loaded: {sorted(self.adapters) or 'none'}")
        if self.merged_adapters:
            yield self._merged_model(name)
            return
        model.set_adapter(name)
        yield model

    # -- the protocol -------------------------------------------------------------------------------------
    def chat_prompt(self, system: str, user: str) -> str:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def score(self, requests: Sequence[ScoreRequest]) -> list[float]:
        torch = require("torch", "pip install torch==2.13.0")
        by_adapter: dict[str | None, list[int]] = defaultdict(list)
        for i, r in enumerate(requests):
            by_adapter[r.adapter].append(i)
        scores = [0.0] * len(requests)
        with self._lock, torch.inference_mode():
            for adapter, indices in by_adapter.items():
                with self._adapter(adapter) as model:
                    chosen = [requests[i] for i in indices]
                    for i, p in zip(indices, self._score_rows(model, chosen), strict=True):
                        scores[i] = p
        return scores

    def _score_rows(self, model: Any, requests: Sequence[ScoreRequest]) -> list[float]:
        """P(Yes) for rows that may continue different prefixes (several readers' feeds merged into one call).

        Rows with a prefix and a suffix are packed: each prefix once, its candidates after it, several readers in
        one sequence (`packed_calls`), so no prefix's cache is copied per row and readers share a call's fixed
        costs. Otherwise up to `batch_size` distinct prefixes are computed together in one left-padded forward
        pass; then every batch of `batch_size` suffixes, whatever prefixes its rows continue, is one forward pass
        over its rows' prefix caches. Taking the prefixes a window at a time bounds the cache memory however many
        readers one call holds."""
        torch = require("torch", "pip install torch==2.13.0")
        transformers = require("transformers", "pip install 'transformers>=5.16.1,<5.20'")
        by_prefix: dict[str, list[int]] = defaultdict(list)
        for i, r in enumerate(requests):
            by_prefix[r.prefix].append(i)
        prefixes = list(by_prefix)
        scores = [0.0] * len(requests)
        if self.pack_readers and all(prefixes) and all(r.suffix for r in requests):
            for call in packed_calls([(p, by_prefix[p]) for p in prefixes], 4 * self.batch_size, self.batch_size):
                blocks = [(prefix, [requests[i].suffix for i in rows]) for prefix, rows in call]
                margins = packed_margins(model, self.tokenizer, blocks, self._answer_ids)
                for i, p in zip([i for _, rows in call for i in rows], torch.sigmoid(margins).tolist(), strict=True):
                    scores[i] = p
            return scores
        for first in range(0, len(prefixes), self.batch_size):
            window = prefixes[first : first + self.batch_size]
            layers, prefix_mask = self._prefix_caches(model, window)
            rows = [(g, i) for g, prefix in enumerate(window) for i in by_prefix[prefix]]  # (prefix row, request)
            for start in range(0, len(rows), self.batch_size):
                batch = rows[start : start + self.batch_size]
                cache = mask = None
                if layers is not None:
                    groups = torch.tensor([g for g, _ in batch], device=model.device)
                    # indexing copies: the forward pass extends this cache, never the shared prefix tensors
                    cache = transformers.DynamicCache([(keys[groups], values[groups]) for keys, values in layers])
                    mask = prefix_mask[groups]
                suffixes = [requests[i].suffix for _, i in batch]
                n_prefix = 0 if mask is None else mask.shape[1]
                margins = answer_margins(model, self.tokenizer, suffixes, cache, n_prefix, self._answer_ids, mask)
                for (_, i), p in zip(batch, torch.sigmoid(margins).tolist(), strict=True):
                    scores[i] = p
        return scores

    def _prefix_caches(self, model: Any, prefixes: list[str]) -> tuple[list[tuple[Any, Any]] | None, Any]:
        """Key and value tensors per layer (one row per prefix) and the prefixes' attention mask (rows × width),
        from one forward pass. Left padding puts every prefix's end at the right edge, where its suffix continues;
        explicit positions give each prefix's real tokens 0..len-1, as if computed alone. (None, None): all empty."""
        tokenizer = self.tokenizer
        tokenizer.padding_side = "left"
        batch = tokenizer(prefixes, add_special_tokens=False, padding=True, return_tensors="pt").to(model.device)
        if batch.input_ids.shape[1] == 0:
            return None, None
        positions = (batch.attention_mask.cumsum(1) - 1).clamp(min=0)
        cache = model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=positions, use_cache=True
        ).past_key_values
        return [(layer.keys, layer.values) for layer in cache.layers], batch.attention_mask

    def generate(self, requests: Sequence[GenerateRequest]) -> list[Generation]:
        torch = require("torch", "pip install torch==2.13.0")
        results: list[Generation | None] = [None] * len(requests)
        groups: dict[tuple[str | None, int], list[int]] = defaultdict(list)
        for i, r in enumerate(requests):
            groups[(r.adapter, r.max_new_tokens)].append(i)
        tokenizer = self.tokenizer
        with self._lock, torch.inference_mode():
            for (adapter, max_new), indices in groups.items():
                with self._adapter(adapter) as model:
                    tokenizer.padding_side = "left"  # generation continues from the right edge
                    batch = tokenizer(
                        [requests[i].prompt for i in indices],
                        add_special_tokens=False,
                        padding=True,
                        return_tensors="pt",
                    )
                    output = model.generate(
                        **batch,
                        max_new_tokens=max_new,
                        do_sample=False,
                        repetition_penalty=1.1,
                        pad_token_id=tokenizer.pad_token_id,
                    )
                    new = output[:, batch.input_ids.shape[1] :]
                    for row, i in enumerate(indices):
                        tokens = [t for t in new[row].tolist() if t != tokenizer.pad_token_id]
                        results[i] = Generation(
                            text=tokenizer.decode(tokens, skip_special_tokens=True).strip(),
                            prompt_tokens=int(batch.attention_mask[row].sum()),
                            completion_tokens=len(tokens),
                        )
        return [r for r in results if r is not None]
