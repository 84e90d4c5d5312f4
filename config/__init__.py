"""The settings: every knob of the service in one pydantic model read from NEWSRANK_* variables, and the A/B
experiment's declaration. A low floor: imports only `core`, so the LLM backends and the feed may read it.
"""
