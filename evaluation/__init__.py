"""Measurement: offline replay of MIND impressions through the feed's own ranking path, and the operator's
outcome statistics over the feedback store.

Imports `core`, `config`, `retrieval`, `llm` and `feed`.
"""
