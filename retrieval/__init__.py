"""Articles: the Chroma vector store, the embedder and ingestion from JSONL and MIND files.

Imports `core` and `config`.
"""
