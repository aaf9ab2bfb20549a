"""serac: memory-based model editing. Correct what a language model says without touching its weights."""

from serac.edits import Edit

__version__ = "0.1.0"

__all__ = ["Edit", "__version__"]
