"""bench: one harness to summarise image datasets and tell how they differ.

Public API for plugin authors: ``bench.hookimpl`` and the contract in ``bench.api``.
"""

from bench.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["__version__", "hookimpl"]
