"""Weight editors the benchmark compares SERAC against, behind one interface (:class:`Editor`).

Registry names: ``"rome"`` (:class:`~serac.editors.rome.ROMEEditor`), ``"memit"``
(:class:`~serac.editors.memit.MEMITEditor`), ``"ft"`` (:class:`~serac.editors.finetune.FineTuneEditor`,
FT+L), ``"cache"`` (:class:`~serac.editors.cache.CacheEditor`), plus any other :class:`Editor` subclass that
sets ``name`` (such as the encoder-decoder rank-one editor of :mod:`serac.editors.encdec`).

Example:
    >>> from serac.editors import get_editor
    >>> editor = get_editor("rome", layer=4)
    >>> editor.name, editor.supports_sequential
    ('rome', True)
"""

from __future__ import annotations

import importlib
from typing import Any

from serac.editors.base import Editor, WeightEditor
from serac.editors.layout import LAYOUTS, ModelLayout, UnknownLayoutError, get_layout, register_layout

__all__ = [
    "LAYOUTS",
    "Editor",
    "ModelLayout",
    "UnknownLayoutError",
    "WeightEditor",
    "available_editors",
    "get_editor",
    "get_layout",
    "register_layout",
]

# Imported on first lookup so `import serac.editors` stays light; a missing optional module is skipped.
_EDITOR_MODULES = (
    "rome",
    "memit",
    "finetune",
    "cache",
    "encdec",
    "mend",
    "salem",
    "knowledge_neurons",
    "ke",
)


def _registry() -> dict[str, type[Editor]]:
    for module in _EDITOR_MODULES:
        try:
            importlib.import_module(f"{__name__}.{module}")
        except ModuleNotFoundError as error:
            if error.name != f"{__name__}.{module}":
                raise
    found: dict[str, type[Editor]] = {}
    pending = list(Editor.__subclasses__())
    while pending:
        cls = pending.pop()
        pending += cls.__subclasses__()
        name = cls.__dict__.get("name")
        # The benchmark's unedited model and SERAC implement the interface too, but are no editing
        # algorithms: the registry holds the editors of this package and any a user defines.
        elsewhere_in_library = cls.__module__.startswith("serac.") and not cls.__module__.startswith(
            f"{__name__}."
        )
        if isinstance(name, str) and not elsewhere_in_library:
            found.setdefault(name, cls)
    return found


def available_editors() -> list[str]:
    """Registry names :func:`get_editor` accepts."""
    return sorted(_registry())


def get_editor(name: str, **hyperparameters: Any) -> Editor:
    """A new editor by registry name, with hyperparameters as keyword arguments.

    Raises ``KeyError`` for an unknown name and ``TypeError``/``ValueError`` for bad hyperparameters.
    """
    registry = _registry()
    if name not in registry:
        raise KeyError(f"unknown editor {name!r}; available: {sorted(registry)}")
    return registry[name](**hyperparameters)
