"""Weight editors the benchmark compares SERAC against, behind one interface (:class:`Editor`).

One subpackage per method, each exporting its editor class: :mod:`~serac.editors.rome`,
:mod:`~serac.editors.memit`, :mod:`~serac.editors.finetune` (FT+L), :mod:`~serac.editors.cache`,
:mod:`~serac.editors.encdec` (rank-one editing of encoder-decoder models), :mod:`~serac.editors.mend`,
:mod:`~serac.editors.salem`, :mod:`~serac.editors.ke` and :mod:`~serac.editors.knowledge_neurons`. What
several methods share stays here: the interface (:mod:`~serac.editors.base`), where each architecture keeps
its MLPs (:mod:`~serac.editors.layout`), the hyperparameter presets (:mod:`~serac.editors.hparams`) and the
machinery of the preset-driven editors (:mod:`~serac.editors.common`), the key, value and covariance math
of ROME and MEMIT (:mod:`~serac.editors.keys`, :mod:`~serac.editors.values`,
:mod:`~serac.editors.layer_stats`) and gradient saliency (:mod:`~serac.editors.saliency`).

:func:`get_editor` builds an editor by its registry name (:func:`available_editors`); an editor of your own
joins the registry with :func:`register_editor`.

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
    "register_editor",
    "register_layout",
]

#: Registry name -> ``"module:Class"`` of the editors of this package, imported on first lookup so that
#: ``import serac.editors`` stays light; :func:`register_editor` adds classes.
_EDITORS: dict[str, str | type[Editor]] = {
    "rome": "serac.editors.rome:ROMEEditor",
    "memit": "serac.editors.memit:MEMITEditor",
    "ft": "serac.editors.finetune:FineTuneEditor",
    "cache": "serac.editors.cache:CacheEditor",
    "encdec_rank_one": "serac.editors.encdec:RankOneEncoderDecoderEditor",
    "mend": "serac.editors.mend:MENDEditor",
    "salem": "serac.editors.salem:SaLEMEditor",
    "kn": "serac.editors.knowledge_neurons:KnowledgeNeuronsEditor",
    "ke": "serac.editors.ke:KEEditor",
}


def available_editors() -> list[str]:
    """Registry names :func:`get_editor` accepts."""
    return sorted(_EDITORS)


def register_editor(name: str, cls: type[Editor]) -> None:
    """Make ``get_editor(name, ...)`` build ``cls``, an :class:`Editor` subclass of your own.

    Raises ``TypeError`` for anything but an :class:`Editor` subclass and ``ValueError`` for an empty name or
    one already taken by another editor.

    Example:
        >>> from serac.editors import get_editor, register_editor
        >>> from serac.editors.rome import ROMEEditor
        >>> class LoudROME(ROMEEditor):
        ...     name = "loud_rome"
        >>> register_editor("loud_rome", LoudROME)
        >>> type(get_editor("loud_rome", layer=4)).__name__
        'LoudROME'
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"an editor's registry name must be a non-empty string, got {name!r}")
    if not (isinstance(cls, type) and issubclass(cls, Editor)):
        raise TypeError(f"register_editor expects a subclass of serac.editors.Editor, got {cls!r}")
    if name in _EDITORS and _editor_class(name) is not cls:
        raise ValueError(f"the editor name {name!r} is taken by {_editor_class(name).__qualname__}")
    _EDITORS[name] = cls


def get_editor(name: str, **hyperparameters: Any) -> Editor:
    """A new editor by registry name, with hyperparameters as keyword arguments.

    Raises ``KeyError`` for an unknown name and ``TypeError``/``ValueError`` for bad hyperparameters.
    """
    if name not in _EDITORS:
        raise KeyError(f"unknown editor {name!r}; available: {available_editors()}")
    return _editor_class(name)(**hyperparameters)


def _editor_class(name: str) -> type[Editor]:
    entry = _EDITORS[name]
    if isinstance(entry, type):
        return entry
    module, _, attribute = entry.partition(":")
    return getattr(importlib.import_module(module), attribute)
