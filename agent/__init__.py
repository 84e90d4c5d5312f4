"""newsrank: a personalized news feed that an open LLM ranks and explains.

Importing this package is cheap: torch, transformers and chromadb load only when first used.
"""

from core.errors import BackendError, EmptyStore, InvalidInput, NewsrankError, NotFound

__all__ = ["BackendError", "EmptyStore", "InvalidInput", "NewsrankError", "NotFound"]
__version__ = "0.1.0"
