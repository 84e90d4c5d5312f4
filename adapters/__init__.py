"""LoRA adapters learned from reader feedback: training data export, training, the evaluation gate and the
versioned registry that serving reads.

Imports `core`, `config`, `llm`, `feed` (the serving prompts and profiles, so trained and served prompts match) and
`evaluation` (the MIND replay it trains on).
"""
