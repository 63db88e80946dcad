"""Retrieval quality against bits per vector: metrics and the ``binsearch eval`` tables."""
