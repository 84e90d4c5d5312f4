"""The dependency-free core: the records every package passes around, the store and LLM protocols, and the
error hierarchy. It imports nothing of the project; every other package may import it."""

__version__ = "0.1.0"
