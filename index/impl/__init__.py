"""The index's machinery: scan kernels, fast-scan layouts and tables, top-k, plans, kernel choice.

Nothing here imports :mod:`index.flat`; :class:`index.BinaryIndex` composes these.
"""
