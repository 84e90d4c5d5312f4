"""`newsrank llm-serve --print`: the exact vLLM server command line (the server itself runs in
test_backend_contract.py)."""

import os
import shlex
import subprocess
import sys
from pathlib import Path

from adapters.registry import AdapterRegistry
from store.sqlite import SqliteFeedbackStore
from tests.conftest import MODEL_CACHE


def test_the_command_serves_the_model_and_the_active_adapters(tmp_path):
    registry = AdapterRegistry(
        tmp_path / "data" / "adapters", SqliteFeedbackStore(tmp_path / "data" / "feedback.sqlite3")
    )
    for name in ("clicks", "clicks", "sports"):
        folder = tmp_path / f"src-{name}"
        folder.mkdir(exist_ok=True)
        (folder / "adapter_config.json").write_text("{}")
        registry.publish(name, folder)
    env = {**os.environ, "NEWSRANK_DATA_DIR": str(tmp_path / "data"), "NEWSRANK_MODEL_CACHE": str(MODEL_CACHE)}
    out = subprocess.run(
        [sys.executable, "-m", "serve.cli", "llm-serve", "--port", "8123", "--print", "--", "--max-num-seqs", "8"],
        env=env, capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1],
    ).stdout  # fmt: skip
    words = shlex.split(out)
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True" in words and any(
        w.startswith("VLLM_CPU_KVCACHE_SPACE=") for w in words
    )
    command = words[words.index(sys.executable) :]
    assert command[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]

    def flag(name: str) -> str:
        return command[command.index(name) + 1]

    assert flag("--model") == str(MODEL_CACHE / "SmolLM2-135M-Instruct")
    assert flag("--served-model-name") == "smollm2-135m" and flag("--port") == "8123"
    assert flag("--dtype") == "float32" and flag("--max-logprobs") == "20"
    assert {"--enable-prefix-caching", "--enable-lora"} <= set(command)
    modules = command[command.index("--lora-modules") + 1 : command.index("--lora-modules") + 3]
    assert modules == [f"clicks@2={registry.root}/clicks/v2", f"sports@1={registry.root}/sports/v1"]  # active only
    assert command[-2:] == ["--max-num-seqs", "8"]
