"""The conversation: "why was this recommended?", what-ifs and preference changes, answered from the stored
ranking record and the feed's own blend.

Imports `core`, `config`, `llm` and `feed`.
"""
