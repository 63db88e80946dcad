"""The ``binsearch`` command line: one module per group of commands, composed in ``main``."""

from binsearch.cli.main import main

__all__ = ["main"]
