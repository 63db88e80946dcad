"""binsearch: binary-embedding semantic search.

The Python API is one object, :class:`Collection` (create / open / add /
delete / get / search / snapshot / close); see ``docs/collection.md``.
"""

from binsearch.collection.collection import AddResult, Collection, CollectionError, SearchResult

__all__ = ["AddResult", "Collection", "CollectionError", "SearchResult"]
