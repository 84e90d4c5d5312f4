"""The dependency-free floor: the records every package passes around, the store and LLM protocols, the error
hierarchy, the metrics maths, the one time parser. It imports nothing of the project; every package may import it."""

__version__ = "0.1.0"
