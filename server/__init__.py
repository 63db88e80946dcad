"""The HTTP search service: ``create_app`` in :mod:`server.app`, run by ``binsearch serve``."""
