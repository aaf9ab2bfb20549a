"""serac: memory-based model editing. Correct what a language model says without touching its weights.

Example:
    >>> from serac import Edit, EditableModel
    >>> model = EditableModel.from_defaults()  # doctest: +SKIP
    >>> model.edit([Edit(prompt="{} plays the sport of", subject="LeBron James", target="football")])  # doctest: +SKIP
    [0]
"""

from serac.counterfactual import CounterfactualConfig, CounterfactualModel
from serac.edits import Edit
from serac.modeling import EditableModel, EditRoutingError, SeracConfig
from serac.scope import (
    CrossEncoderScopeClassifier,
    EmbeddingScopeClassifier,
    ScopeClassifier,
    ScopeClassifierConfig,
    ScopeDecision,
    load_scope_classifier,
)
from serac.store import EditStore, EditStoreConfig, EditStoreError, UnknownEditError

__version__ = "0.1.0"

__all__ = [
    "CounterfactualConfig",
    "CounterfactualModel",
    "CrossEncoderScopeClassifier",
    "Edit",
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
    "UnknownEditError",
    "__version__",
    "load_scope_classifier",
]
