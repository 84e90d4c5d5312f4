"""The model's own tokenizer and chat template, without its weights.

The vllm and openai backends build prompts and read answers with it, so they see exactly the token sequences
that the transformers backend scores: the prefix and the suffix are tokenized separately and joined.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from core.errors import require
from llm.backends.transformers import answer_token_ids
from llm.models import offline, resolve_llm


class ModelTokenizer:
    def __init__(self, model: str, cache_dir: Path) -> None:
        self.model = model
        self.cache_dir = cache_dir
        self._lock = threading.Lock()
        self._tokenizer: Any = None

    @property
    def path(self) -> str:
        """A local folder (or model id) that vLLM and transformers load; converts the packaged model once."""
        return resolve_llm(self.model, self.cache_dir)

    @property
    def tokenizer(self) -> Any:
        with self._lock:
            if self._tokenizer is None:
                offline()
                transformers = require("transformers", "pip install 'transformers>=5.16.1,<5.20'")
                self._tokenizer = transformers.AutoTokenizer.from_pretrained(self.path)
                self.answer_ids = answer_token_ids(self._tokenizer)
            return self._tokenizer

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def count_tokens(self, text: str) -> int:
        return len(self.encode(text))

    def chat_prompt(self, system: str, user: str) -> str:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
