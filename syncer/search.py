"""The search function applications call from SQL, and the thin Python access `syncer search` uses."""

from __future__ import annotations

from typing import Any

import numpy as np
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from . import fragments
from .database import transaction
from .queries import query
from .sources import Source


def install(conn: psycopg.Connection, source: Source) -> None:
    """``syncer.search_<name>(query_embedding, match_count, filter)``: the source's columns plus similarity.

    Replaced in place, so the roles granted EXECUTE keep it; when the table's columns changed (the
    result type with them), dropped and created anew, and those grants given back.
    """
    parts = _parts(source)
    grantees = [row[0] for row in conn.execute(query("search", "grants"), {"signature": signature(source)})]
    try:
        with conn.transaction():
            conn.execute(query("search", "create", **parts))
    except psycopg.errors.InvalidFunctionDefinition:  # "cannot change return type of existing function"
        conn.execute(query("search", "drop", **parts))
        conn.execute(query("search", "create", **parts))
        for grantee in grantees:
            conn.execute(query("search", "regrant", **parts, grantee=sql.Identifier(grantee)))


def signature(source: Source) -> str:
    """``syncer.search_docs(public.vector, integer, jsonb)``."""
    vector = fragments.vector_parts(source.vector_schema)["vector"]
    return sql.SQL("{}({}, integer, jsonb)").format(source.search_fn, vector).as_string(None)


def render(source: Source) -> list[sql.Composed]:
    return [query("search", "create", **_parts(source))]


def _parts(source: Source) -> dict[str, sql.Composable]:
    returns = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(column), sql.SQL(sql_type)) for column, sql_type in source.columns
    )
    t_columns = sql.SQL(", ").join(sql.Identifier("t", column) for column, _ in source.columns)
    return fragments.parts(source) | {"search_fn": source.search_fn, "returns": returns, "t_columns": t_columns}


def top(
    conn: psycopg.Connection, source: Source, embedding: np.ndarray, k: int, filter: dict[str, Any] | None = None
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Column names and rows of the ``k`` rows most similar to ``embedding``."""
    params = {"embedding": embedding, "k": k, "filter": Jsonb(filter) if filter is not None else None}
    with transaction(conn):
        cur = conn.execute(query("search", "top", search_fn=source.search_fn), params)
        return [d.name for d in cur.description or []], cur.fetchall()


def drop(conn: psycopg.Connection, source: Source) -> None:
    conn.execute(query("search", "drop", **_parts(source)))
