"""The edit-cache baseline: an edit's exact prompt answered with its target (registry name ``"cache"``)."""

from serac.editors.cache.editor import CachedEditsModel, CacheEditor

__all__ = ["CacheEditor", "CachedEditsModel"]
