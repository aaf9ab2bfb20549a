"""KE, KnowledgeEditor: a trained hypernetwork turns each edit into a weight update (registry name ``"ke"``).

:mod:`~serac.editors.ke.editor` applies edits, :mod:`~serac.editors.ke.network` holds the hypernetwork,
:mod:`~serac.editors.ke.training` trains and caches it."""

from serac.editors.ke.editor import KEEditor

__all__ = ["KEEditor"]
