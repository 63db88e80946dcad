"""Collections: a codec and an index paired (``CodedIndex``), with documents in SQLite.

:class:`Collection` is the one Python API; see ``docs/collection.md``.
"""
