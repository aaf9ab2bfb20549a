"""MEND: a trained editor network turns one fine-tuning gradient into a weight edit (registry name
``"mend"``).

:mod:`~serac.editors.mend.editor` applies edits, :mod:`~serac.editors.mend.network` holds the editor
network and the gradient factors it reads, :mod:`~serac.editors.mend.training` trains and caches it."""

from serac.editors.mend.editor import MENDEditor, MENDEditorConfig

__all__ = ["MENDEditor", "MENDEditorConfig"]
