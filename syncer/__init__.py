"""syncer keeps a pgvector embedding of table rows' text in sync with the rows.

``from syncer import Searcher`` searches them from an application (see ``syncer.api``).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Match", "Searcher"]


def __getattr__(name: str) -> Any:
    """``Searcher`` and ``Match`` on first use: the command line does not pay for importing them."""
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'syncer' has no attribute {name!r}")
