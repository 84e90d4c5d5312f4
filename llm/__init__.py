"""LLM access: the backends (transformers, vLLM, OpenAI-compatible replicas, a fake), the models on disk, the
versioned prompts, untrusted text, what the LLM is asked and how its answers are read, and its match of readers
and articles read from its hidden states (`tower.py`).

Imports only `core`, `config` and `prompts`: every layer above may use the LLM, the LLM knows none of them.
"""
