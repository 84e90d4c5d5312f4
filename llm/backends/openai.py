"""HTTP to one or more `vllm serve` replicas (OpenAI-compatible): the scale-out path.

P(Yes) comes from `/v1/completions` with `max_tokens=1` and the top-20 log-probabilities of the answer token,
read by token id (`return_tokens_as_token_ids`), so it is the number the vllm and transformers backends compute.
Prompts go as token ids, tokenized here with the model's own tokenizer (no weights are loaded), so every
backend scores the same token sequences. The adapter is chosen by `model=<adapter name>`; the base model is
served under the configured LLM name (`newsrank llm-serve` starts replicas that way).

Requests are spread round robin over the replicas; a transport error or a 5xx answer marks a replica down for
a while and the request is retried (boundedly) on the next one. Replies are untrusted input: their shape is
checked, and an error never comes back as if it were model output.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from core.errors import BackendError, NotFound, require
from core.llm import GenerateRequest, Generation, ScoreRequest
from llm.backends.tokenizer import ModelTokenizer
from llm.relevance import yes_probability_from_top

TOP_LOGPROBS = 20  # vLLM's default ceiling (--max-logprobs)
DOWN_SECONDS = 10.0  # how long a failed replica is skipped while others are up
TOKEN_ID = "token_id:"  # how vLLM names tokens with return_tokens_as_token_ids


class ReplicaError(Exception):
    """One replica failed to answer (transport error or 5xx): worth trying another."""


class UnknownModel(BackendError):
    """A replica does not serve the model or adapter asked for (HTTP 404)."""


class OpenAIBackend:
    name = "openai"
    supports_adapters = True

    def __init__(
        self,
        model: str,
        cache_dir: Path,
        urls: Sequence[str],
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        retries: int = 2,
        batch_size: int = 16,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not urls:
            raise BackendError("the openai backend needs at least one replica URL")
        self.model = model
        self.urls = [u.rstrip("/") for u in urls]
        self.retries = retries
        self.batch_size = batch_size
        self.adapters: dict[str, str] = {}
        self._tokens = ModelTokenizer(model, cache_dir)
        httpx = require("httpx", "pip install httpx")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(timeout=timeout, headers=headers)
        self._clock = clock
        self._lock = threading.Lock()
        self._loading = threading.Lock()
        self._turn = itertools.cycle(range(len(self.urls)))
        self._down_until = [0.0] * len(self.urls)
        self._served: set[tuple[str, str]] = set()  # (replica, adapter) known to be loaded there

    # -- replicas -----------------------------------------------------------------------------------------
    def _next_replica(self) -> str:
        """Round robin over the replicas that are up; if none is, over all of them (one may be back)."""
        with self._lock:
            now = self._clock()
            for _ in range(len(self.urls)):
                i = next(self._turn)
                if self._down_until[i] <= now:
                    return self.urls[i]
            return self.urls[next(self._turn)]

    def _mark_down(self, url: str) -> None:
        with self._lock:
            self._down_until[self.urls.index(url)] = self._clock() + DOWN_SECONDS

    def _call(self, url: str, method: str, path: str, body: dict[str, Any] | None = None, reply: bool = True) -> Any:
        """One HTTP call to one replica: its JSON reply (if `reply`), ReplicaError if worth retrying elsewhere,
        BackendError if not."""
        httpx = require("httpx", "pip install httpx")
        try:
            response = self._http.request(method, url + path, json=body)
        except httpx.TransportError as exc:  # refused, reset, timed out
            raise ReplicaError(f"{url}: {type(exc).__name__}: {exc}") from exc
        if response.status_code >= 500:
            raise ReplicaError(f"{url}: HTTP {response.status_code}")
        if response.status_code == 404:
            raise UnknownModel(f"{url}{path}: HTTP 404: {response.text[:300]}")
        if response.status_code >= 400:
            raise BackendError(f"{url}{path}: HTTP {response.status_code}: {response.text[:300]}")
        if not reply:  # the LoRA endpoints answer in plain text
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise BackendError(f"{url}{path}: the reply is not JSON") from exc

    def _complete(self, body: dict[str, Any], adapter: str | None) -> dict[str, Any]:
        """POST /v1/completions to the next replica that answers, at most 1 + retries replicas tried."""
        errors = []
        for _ in range(1 + self.retries):
            url = self._next_replica()
            try:
                if adapter is not None:
                    self._ensure_adapter(url, adapter)
                try:
                    reply = self._call(url, "POST", "/v1/completions", body)
                except UnknownModel:
                    if adapter is None:
                        raise
                    # the replica restarted and forgot an adapter loaded at run time: load it again, once
                    with self._lock:
                        self._served.discard((url, adapter))
                    self._ensure_adapter(url, adapter)
                    reply = self._call(url, "POST", "/v1/completions", body)
            except ReplicaError as exc:
                self._mark_down(url)
                errors.append(str(exc))
                continue
            if not isinstance(reply, dict) or not isinstance(reply.get("choices"), list):
                raise BackendError(f"{url}/v1/completions: unexpected reply shape (no choices)")
            return reply
        raise BackendError(f"no LLM replica answered ({len(errors)} tries): " + "; ".join(errors))

    def _ensure_adapter(self, url: str, name: str) -> None:
        """Load an adapter onto a replica the first time a request for it goes there (runtime LoRA loading:
        replicas started with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, the adapter folder visible to them)."""
        with self._loading:  # concurrent batches must not load the same adapter twice
            if (url, name) in self._served:
                return
            models = self._call(url, "GET", "/v1/models")
            data = models.get("data") if isinstance(models, dict) else None
            listed = {m.get("id") for m in data if isinstance(m, dict)} if isinstance(data, list) else set()
            if name not in listed:
                body = {"lora_name": name, "lora_path": self.adapters[name]}
                try:
                    self._call(url, "POST", "/v1/load_lora_adapter", body, reply=False)
                except BackendError as exc:
                    raise BackendError(
                        f"{url} does not serve adapter {name!r} and could not load it ({exc}); start the replicas "
                        f"with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True and the adapter folder visible to them, or "
                        f"with --lora-modules {name}=FOLDER"
                    ) from exc
            with self._lock:
                self._served.add((url, name))

    # -- the protocol -------------------------------------------------------------------------------------
    def counters(self) -> dict[str, float]:
        return {}  # what it does is counted by the wrappers around it (MeteredBackend, MicroBatcher)

    def warm(self) -> None:
        self._tokens.tokenizer  # noqa: B018 - loading is the point

    def chat_prompt(self, system: str, user: str) -> str:
        return self._tokens.chat_prompt(system, user)

    def count_tokens(self, text: str) -> int:
        return self._tokens.count_tokens(text)

    def load_adapter(self, name: str, path: str) -> None:
        """Serve an adapter under `name`. A replaced one (same name, new folder) is reloaded on every replica."""
        with self._lock:
            replaced = name in self.adapters and self.adapters[name] != str(path)
            self.adapters[name] = str(path)
            stale = {key for key in self._served if key[1] == name}
            self._served -= stale
        if replaced:
            for url, _ in stale:
                # not loaded there any more, or down: either way it is loaded afresh on its next use
                with contextlib.suppress(ReplicaError, BackendError):
                    self._call(url, "POST", "/v1/unload_lora_adapter", {"lora_name": name}, False)

    def close(self) -> None:
        self._http.close()

    def _check_adapter(self, name: str | None) -> None:
        if name is not None and name not in self.adapters:
            raise NotFound(f"adapter {name!r} is not loaded; loaded: {sorted(self.adapters) or 'none'}")

    def score(self, requests: Sequence[ScoreRequest]) -> list[float]:
        if not requests:
            return []
        for r in requests:
            self._check_adapter(r.adapter)
        prefixes = {p: self._tokens.encode(p) for p in {r.prefix for r in requests}}
        prompts = [prefixes[r.prefix] + self._tokens.encode(r.suffix) for r in requests]
        # one completion call per batch of one adapter; batches run concurrently, spread over the replicas
        batches = []
        for adapter in dict.fromkeys(r.adapter for r in requests):
            indices = [i for i, r in enumerate(requests) if r.adapter == adapter]
            for start in range(0, len(indices), self.batch_size):
                batches.append((adapter, indices[start : start + self.batch_size]))
        answer_ids = self._tokens.answer_ids
        scores = [0.0] * len(requests)

        def run(batch: tuple[str | None, list[int]]) -> None:
            adapter, indices = batch
            body = {
                "model": adapter or self.model,
                "prompt": [prompts[i] for i in indices],
                "max_tokens": 1,
                "temperature": 0.0,
                "logprobs": TOP_LOGPROBS,
                "return_tokens_as_token_ids": True,
            }
            reply = self._complete(body, adapter)
            for i, top in zip(indices, _first_token_logprobs(reply, len(indices)), strict=True):
                scores[i] = yes_probability_from_top(top, answer_ids)

        self._parallel(run, batches)
        return scores

    def generate(self, requests: Sequence[GenerateRequest]) -> list[Generation]:
        for r in requests:
            self._check_adapter(r.adapter)
        results: list[Generation | None] = [None] * len(requests)

        def run(i: int) -> None:
            r = requests[i]
            body = {
                "model": r.adapter or self.model,
                "prompt": self._tokens.encode(r.prompt),
                "max_tokens": r.max_new_tokens,
                "temperature": 0.0,
                "repetition_penalty": 1.1,  # as the other backends
            }
            reply = self._complete(body, r.adapter)
            results[i] = _generation(reply)

        self._parallel(run, range(len(requests)))
        return [g for g in results if g is not None]

    def _parallel(self, fn: Callable[[Any], None], items: Sequence[Any]) -> None:
        if len(items) <= 1:
            for item in items:
                fn(item)
            return
        with ThreadPoolExecutor(max_workers=min(len(items), 2 * len(self.urls))) as pool:
            for future in [pool.submit(fn, item) for item in items]:
                future.result()  # re-raises the first failure


def _first_token_logprobs(reply: dict[str, Any], n: int) -> list[dict[int, float]]:
    """The top log-probabilities of the first generated token of each of n choices, by choice index."""
    choices = reply["choices"]
    if len(choices) != n:
        raise BackendError(f"expected {n} completions, got {len(choices)}")
    out: dict[int, dict[int, float]] = {}
    for choice in choices:
        try:
            top = choice["logprobs"]["top_logprobs"][0]
            parsed = {int(token.removeprefix(TOKEN_ID)): float(lp) for token, lp in top.items()}
            index = int(choice["index"])
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            raise BackendError(f"unexpected completion shape: no first-token log-probabilities ({exc!r})") from exc
        if not parsed or not all(token.startswith(TOKEN_ID) for token in top):
            raise BackendError("unexpected completion shape: log-probabilities not keyed by token id")
        out[index] = parsed
    if sorted(out) != list(range(n)):
        raise BackendError(f"completion indices {sorted(out)} do not match the {n} prompts")
    return [out[i] for i in range(n)]


def _generation(reply: dict[str, Any]) -> Generation:
    try:
        (choice,) = reply["choices"]
        text, usage = choice["text"], reply["usage"]
        prompt_tokens, completion_tokens = int(usage["prompt_tokens"]), int(usage["completion_tokens"])
    except (KeyError, TypeError, ValueError) as exc:
        raise BackendError(f"unexpected completion shape ({exc!r})") from exc
    if not isinstance(text, str):
        raise BackendError("unexpected completion shape: text is not a string")
    return Generation(text.strip(), prompt_tokens, completion_tokens)
