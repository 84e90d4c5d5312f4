"""The online feed: a reader's profile, candidates, signals, the blend, the learned ranker, explanations,
position bias, exposure caps, and the background scorer that computes the LLM's relevance ahead of requests.

Imports `core`, `config`, `retrieval`, `llm` and `prompts`; nothing above it (chat, evaluation, adapters, serve).
"""
