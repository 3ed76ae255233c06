"""A source's own tables: its change log, its queue and its store (with the HNSW index), created when missing."""

from __future__ import annotations

import logging
import time

import psycopg
from psycopg import sql

from . import catalog, fragments
from .queries import query
from .sources import SYNCER_SCHEMA, Source

log = logging.getLogger(__name__)

MODEL_CONSTRAINT = "syncer_one_model"  # the store's CHECK that only its model's vectors go in
QUEUE_COLUMNS = ("dead_at", "refresh", "bulk")  # present once a queue is of 0.2
CHUNK_COLUMN = "chunk"  # present once a store holds chunks
HNSW_M, HNSW_EF_CONSTRUCTION = 16, 64  # pgvector's defaults


def create_queue(conn: psycopg.Connection, source: Source) -> None:
    """The source's queue (and change log), created or brought up to date (an older queue gains the newer
    columns and index)."""
    if not source.shadow and catalog.relation(conn, SYNCER_SCHEMA, source.log_name) is None:
        conn.execute(_create_log(source))
    oid = catalog.relation(conn, SYNCER_SCHEMA, source.queue_name)
    if oid is None:
        conn.execute(query("tables", "create_queue", **fragments.parts(source)))
    elif _current(conn, oid, source):
        return
    conn.execute(_queue_upgrade(source))


def _create_log(source: Source) -> sql.Composed:
    external = sql.SQL(", ").join(
        sql.SQL("ALTER COLUMN {} SET STORAGE EXTERNAL").format(sql.Identifier(k)) for k in source.keys
    )
    named = fragments.key_arrays(source, named=True)
    return query("tables", "create_log", **fragments.parts(source), key_arrays_named=named, external_keys=external)


def _current(conn: psycopg.Connection, oid: int, source: Source) -> bool:
    columns = _columns(conn, oid)
    indexes = (_lease_index(source), _lane_index(source))
    return all(c in columns for c in QUEUE_COLUMNS) and all(catalog.exists(conn, SYNCER_SCHEMA, i) for i in indexes)


def _lease_index(source: Source) -> str:
    return f"{source.queue_name}_lease"


def _lane_index(source: Source) -> str:
    return f"{source.queue_name}_lanes"


def _queue_upgrade(source: Source) -> sql.Composed:
    indexes = {
        "lease_index": sql.Identifier(_lease_index(source)),
        "lane_index": sql.Identifier(_lane_index(source)),
    }
    return query("tables", "queue_dead_letters", queue=source.queue, **indexes)


def create_store(conn: psycopg.Connection, source: Source, model_id: str, dimensions: int) -> bool:
    """The store for ``dimensions``-long vectors that only ``model_id`` may write, created or brought up to
    date (a store of 0.1 gains chunks and the text search column: True, its rows need embedding again)."""
    oid = catalog.relation(conn, source.store_schema, source.store_name)
    if oid is None:
        conn.execute(
            query(
                "tables",
                "create_store",
                **fragments.parts(source),
                dimensions=sql.Literal(dimensions),
                model=sql.Literal(model_id),
                model_constraint=sql.Identifier(MODEL_CONSTRAINT),
            )
        )
        oid = catalog.relation(conn, source.store_schema, source.store_name)
    elif CHUNK_COLUMN in _columns(conn, oid):
        return False
    row = conn.execute(query("tables", "primary_key"), {"oid": oid}).fetchone()
    assert row is not None, f"{source.qualified_store} has no primary key"
    conn.execute(_store_upgrade(source, row[0]))
    return True


def fts_index_name(source: Source) -> str:
    return f"syncer_{source.name}_fts"


def chunk_index_name(source: Source) -> str:
    """An index on chunk numbers: the longest row's count of chunks, in an instant, for the search functions."""
    return f"syncer_{source.name}_chunks"


def _store_upgrade(source: Source, primary_key: str) -> sql.Composed:
    indexes = {
        "fts_index": sql.Identifier(fts_index_name(source)),
        "chunk_index": sql.Identifier(chunk_index_name(source)),
    }
    parts = fragments.parts(source) | {"primary_key": sql.Identifier(primary_key)} | indexes
    return query("tables", "store_chunks", **parts)


def _columns(conn: psycopg.Connection, oid: int) -> list[str]:
    row = conn.execute(query("tables", "queue_columns"), {"oid": oid}).fetchone()
    return list(row[0]) if row and row[0] else []


def qualified_index(source: Source) -> str:
    return sql.Identifier(source.store_schema, source.index_name).as_string(None)


def _index_function(source: Source, version: int = 2) -> sql.Identifier:
    return sql.Identifier(SYNCER_SCHEMA, f"{source.name}{'_next' if source.shadow else ''}_index_v{version}")


def _create_index(source: Source) -> sql.Composed:
    parts = fragments.parts(source)
    return sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} USING hnsw (embedding {})").format(
        sql.Identifier(source.index_name), parts["store"], parts["cosine_ops"]
    )


def index_parts(source: Source) -> dict[str, sql.Composable]:
    return fragments.parts(source) | {
        "index_fn": _index_function(source),
        "index_fn_v1": _index_function(source, 1),  # 0.x's, without the graph's options: dropped
        "index_name": sql.Literal(qualified_index(source)),
        "create_index": sql.Literal(_create_index(source).as_string(None)),
        "index_fn_signature": sql.Literal(index_function_signature(source)),
        "index_fn_v1_signature": sql.Literal(
            sql.SQL("{}(bigint, integer)").format(_index_function(source, 1)).as_string(None)
        ),
        "store_name": sql.Literal(source.store.as_string(None)),
    }


def render(source: Source) -> list[sql.Composed]:
    """What apply renders beyond creating the queue and store: the log, the queue's newer columns, the index
    function."""
    return [
        _create_log(source),
        _queue_upgrade(source),
        query("tables", "index_function", **index_parts(source)),
    ]


def index_function_signature(source: Source) -> str:
    return sql.SQL("{}(bigint, integer, integer, integer)").format(_index_function(source)).as_string(None)


def install_index_function(conn: psycopg.Connection, source: Source) -> None:
    """The owner's function through which workers build the store's index (they do not own the store)."""
    conn.execute(query("tables", "index_function", **index_parts(source)))


def ensure_index(
    conn: psycopg.Connection,
    source: Source,
    memory_kb: int | None = None,
    workers: int | None = None,
    m: int = HNSW_M,
    ef_construction: int = HNSW_EF_CONSTRUCTION,
) -> bool:
    """Build the store's HNSW index if it is missing and no other worker is building it; True if built.

    ``memory_kb`` and ``workers``: the build's memory and parallel workers (default: sized to the index,
    the server's setting); ``m`` and ``ef_construction``: the graph's (default: pgvector's)."""
    started = time.monotonic()
    params = {"memory_kb": memory_kb, "workers": workers, "m": m, "ef_construction": ef_construction}
    row = conn.execute(query("tables", "build_index", **index_parts(source)), params).fetchone()
    if not (row and row[0]):
        return False
    seconds = time.monotonic() - started
    log.info("built hnsw index %s on %s in %.1fs", source.index_name, source.qualified_store, seconds)
    return True


def indexed(conn: psycopg.Connection, source: Source) -> bool:
    return catalog.exists(conn, source.store_schema, source.index_name)


def index_options(conn: psycopg.Connection, source: Source) -> tuple[int, int] | None:
    """The (m, ef_construction) the store's index was built with; None if it has none."""
    row = conn.execute(query("tables", "index_options"), {"index": qualified_index(source)}).fetchone()
    if row is None:
        return None
    options = dict(option.split("=", 1) for option in row[0] or [])
    return int(options.get("m", HNSW_M)), int(options.get("ef_construction", HNSW_EF_CONSTRUCTION))


def unfinished_rebuild(conn: psycopg.Connection, source: Source) -> str | None:
    """The invalid index an unfinished REINDEX INDEX CONCURRENTLY of the store's index left; None if none."""
    params = {"store": source.store.as_string(None), "prefix": f"{source.index_name}_ccnew"}
    row = conn.execute(query("tables", "unfinished_rebuild"), params).fetchone()
    return sql.Identifier(*row).as_string(None) if row else None


def store_rows(conn: psycopg.Connection, source: Source, cap: int) -> int:
    """The store's vectors, counted up to ``cap``."""
    row = conn.execute(query("tables", "store_rows", store=source.store), {"cap": cap}).fetchone()
    return int(row[0]) if row else 0


def drop_index_function(conn: psycopg.Connection, source: Source) -> None:
    conn.execute(query("tables", "drop_index_function", **index_parts(source)))


def drop(conn: psycopg.Connection, source: Source) -> None:
    conn.execute(query("tables", "drop", **index_parts(source)))
