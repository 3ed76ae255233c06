"""Named SQL blocks from the ``sql/*.sql`` files that sit beside the code that runs them.

A block starts with ``-- name: NAME`` and a one-line comment. Per-source objects appear as
``{placeholders}`` filled with ``psycopg.sql.Identifier``/``Composed`` values; values are
always query parameters.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

from psycopg import sql

_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


@cache
def load(module: str) -> dict[str, str]:
    text = resources.files(__package__).joinpath("sql", f"{module}.sql").read_text()
    parts = _HEADER.split(text)
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


def query(module: str, block: str, /, **parts: sql.Composable) -> sql.Composed:
    """The block BLOCK of sql/MODULE.sql with its placeholders filled in."""
    return sql.SQL(load(module)[block]).format(**parts)  # type: ignore[arg-type]
