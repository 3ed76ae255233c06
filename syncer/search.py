"""The search function applications call from SQL, and the thin Python access `syncer search` uses."""

from __future__ import annotations

from typing import Any

import numpy as np
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from . import fragments
from .queries import query
from .sources import Source


def install(conn: psycopg.Connection, source: Source) -> None:
    """``syncer.search_<name>(query_embedding, match_count, filter)``: the source's columns plus similarity.

    A plain SQL function, so PostgreSQL inlines it and the HNSW index serves the ORDER BY.
    """
    returns = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(column), sql.SQL(sql_type)) for column, sql_type in source.columns
    )
    t_columns = sql.SQL(", ").join(sql.Identifier("t", column) for column, _ in source.columns)
    conn.execute(
        query(
            "search",
            "create",
            **fragments.parts(source),
            search_fn=source.search_fn,
            returns=returns,
            t_columns=t_columns,
        )
    )


def top(
    conn: psycopg.Connection, source: Source, embedding: np.ndarray, k: int, filter: dict[str, Any] | None = None
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Column names and rows of the ``k`` rows most similar to ``embedding``."""
    cur = conn.execute(
        query("search", "top", search_fn=source.search_fn),
        {"embedding": embedding, "k": k, "filter": Jsonb(filter) if filter is not None else None},
    )
    return [d.name for d in cur.description or []], cur.fetchall()


def drop(conn: psycopg.Connection, source: Source) -> None:
    conn.execute(query("search", "drop", search_fn=source.search_fn))
