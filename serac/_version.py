"""The library version, in one place: ``pyproject.toml`` reads it, saved configs stamp it."""

__version__ = "0.1.0"
