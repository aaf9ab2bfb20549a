"""serac: memory-based model editing. Correct what a language model says without touching its weights.

Example:
    >>> from serac import Edit, EditableModel
    >>> model = EditableModel.from_defaults()  # doctest: +SKIP
    >>> model.edit([Edit(prompt="{} plays the sport of", subject="LeBron James", target="football")])  # doctest: +SKIP
    [0]
"""

from serac._version import __version__
from serac.counterfactual import CounterfactualConfig, CounterfactualModel
from serac.edits import Edit
from serac.folder import SeracConfig, SeracConfigError
from serac.memory import EditMemory
from serac.modeling import EditableModel, EditRoutingError
from serac.scope import (
    CrossEncoderScopeClassifier,
    EmbeddingScopeClassifier,
    ScopeClassifier,
    ScopeClassifierConfig,
    ScopeDecision,
    load_scope_classifier,
)
from serac.store import EditResult, EditStore, EditStoreConfig, EditStoreError, UnknownEditError

__all__ = [
    "CounterfactualConfig",
    "CounterfactualModel",
    "CrossEncoderScopeClassifier",
    "Edit",
    "EditMemory",
    "EditResult",
    "EditStore",
    "EditStoreConfig",
    "EditStoreError",
    "EditRoutingError",
    "EditableModel",
    "EmbeddingScopeClassifier",
    "ScopeClassifier",
    "ScopeClassifierConfig",
    "ScopeDecision",
    "SeracConfig",
    "SeracConfigError",
    "UnknownEditError",
    "__version__",
    "load_scope_classifier",
]
