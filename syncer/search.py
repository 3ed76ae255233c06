"""The search functions applications call from SQL, and the thin Python access to them.

``syncer.search_<name>``: vector search (rows by their best chunk when a source chunks);
``syncer.hybrid_search_<name>``: reciprocal rank fusion of full-text and vector search.
"""

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

VECTOR_ARGS = "{vector}, integer, jsonb"
CHUNKED_ARGS = "{vector}, integer, jsonb, integer"
HYBRID_ARGS = "text, {vector}, integer, jsonb, double precision, double precision, integer, integer, integer"


def signatures(source: Source) -> dict[str, str]:
    """``block -> signature`` of the functions the source has (``syncer.search_docs(public.vector, ...)``)."""
    search = ("create_chunked", CHUNKED_ARGS) if source.chunked else ("create", VECTOR_ARGS)
    return {search[0]: _signature(source, source.search_fn, search[1]), "create_hybrid": hybrid_signature(source)}


def hybrid_signature(source: Source) -> str:
    return _signature(source, source.hybrid_fn, HYBRID_ARGS)


def _stale_signature(source: Source) -> str:
    """The other shape of the vector search function (its source chunks now, or no longer)."""
    return _signature(source, source.search_fn, VECTOR_ARGS if source.chunked else CHUNKED_ARGS)


def _signature(source: Source, function: sql.Identifier, args: str) -> str:
    vector = fragments.vector_parts(source.vector_schema)["vector"]
    return sql.SQL("{}({})").format(function, sql.SQL(args).format(vector=vector)).as_string(None)


def install(conn: psycopg.Connection, source: Source) -> None:
    """Create or replace the functions in place, so the roles granted EXECUTE keep it; when the table's columns
    changed (the result type with them) or the source's chunking did, dropped and created anew, and those
    grants given back."""
    parts = _parts(source)
    wanted = signatures(source)
    old = [*wanted.values(), _stale_signature(source)]
    grantees = {
        row[0] for signature in old for row in conn.execute(query("search", "grants"), {"signature": signature})
    }
    for block, signature in wanted.items():
        try:
            with conn.transaction():
                conn.execute(query("search", block, **parts))
        except psycopg.errors.InvalidFunctionDefinition:  # "cannot change return type of existing function"
            conn.execute(query("search", "drop", function=sql.SQL(signature)))
            conn.execute(query("search", block, **parts))
        for grantee in sorted(grantees):
            conn.execute(query("search", "regrant", function=sql.SQL(signature), grantee=sql.Identifier(grantee)))
    conn.execute(query("search", "drop", function=sql.SQL(_stale_signature(source))))


def render(source: Source) -> list[sql.Composed]:
    return [query("search", block, **_parts(source)) for block in signatures(source)]


def _parts(source: Source) -> dict[str, sql.Composable]:
    returns = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(column), sql.SQL(sql_type)) for column, sql_type in source.columns
    )
    t_columns = sql.SQL(", ").join(sql.Identifier("t", column) for column, _ in source.columns)
    functions = {"search_fn": source.search_fn, "hybrid_fn": source.hybrid_fn}
    # (match_count - 1) * n + 1 chunks hold match_count rows when no row has more than n chunks
    n = sql.SQL("COALESCE(chunks_per_row, (SELECT pg_catalog.max(c.chunk) FROM {} c) OPERATOR(pg_catalog.+) 1, 1)")
    per_row = n.format(source.store)
    enough = sql.SQL(
        "(match_count OPERATOR(pg_catalog.-) 1) OPERATOR(pg_catalog.*) {} OPERATOR(pg_catalog.+) 1"
    ).format(per_row)
    candidates = sql.SQL(
        "(match_count OPERATOR(pg_catalog.*) candidates OPERATOR(pg_catalog.-) 1) OPERATOR(pg_catalog.*) {} "
        "OPERATOR(pg_catalog.+) 1"
    ).format(per_row)
    limits = {"enough_chunks": enough, "enough_candidates": candidates}
    return fragments.parts(source) | functions | limits | {"returns": returns, "t_columns": t_columns}


def top(
    conn: psycopg.Connection,
    source: Source,
    embedding: np.ndarray,
    k: int,
    filter: dict[str, Any] | None = None,
    text: str | None = None,
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Column names and rows of the ``k`` best rows: by vector search, or hybrid search with ``text``."""
    params = {"embedding": embedding, "k": k, "filter": Jsonb(filter) if filter is not None else None, "text": text}
    block = "top" if text is None else "top_hybrid"
    with transaction(conn):
        conn.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")  # enough chunks for k rows
        cur = conn.execute(query("search", block, search_fn=source.search_fn, hybrid_fn=source.hybrid_fn), params)
        return [d.name for d in cur.description or []], cur.fetchall()


def drop(conn: psycopg.Connection, source: Source) -> None:
    for signature in [*signatures(source).values(), _stale_signature(source)]:
        conn.execute(query("search", "drop", function=sql.SQL(signature)))
