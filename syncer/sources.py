"""What a source is in the database, checked against the catalog, and its objects created idempotently.

A source's objects: its queue (``syncer.<name>_queue``), capture triggers, the embedding store
(``<table>_embeddings`` unless configured), its HNSW index and the search function
(``syncer.search_<name>``). All identifiers are composed with ``psycopg.sql``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from .queries import query
from .settings import ConfigError, SourceConfig, template_pieces

log = logging.getLogger(__name__)

WHITESPACE = " \t\r\n"
PARAGRAPH = "\n\n"
RESERVED_COLUMNS = ("query_embedding", "match_count", "filter", "similarity")
SYNCER_SCHEMA = "syncer"


@dataclass(frozen=True)
class Source:
    """A configured source resolved against the live catalog."""

    config: SourceConfig
    schema: str
    table_name: str
    keys: tuple[str, ...]
    columns: tuple[tuple[str, str], ...]  # (name, SQL type) of every column of the table
    store_schema: str
    store_name: str
    queue_name: str

    @property
    def name(self) -> str:
        return self.config.source_name

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.table_name}"

    @property
    def qualified_store(self) -> str:
        return f"{self.store_schema}.{self.store_name}"

    @property
    def table(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.table_name)

    @property
    def store(self) -> sql.Identifier:
        return sql.Identifier(self.store_schema, self.store_name)

    @property
    def queue(self) -> sql.Identifier:
        return sql.Identifier(SYNCER_SCHEMA, self.queue_name)

    def with_queue(self, queue_name: str) -> Source:
        return replace(self, queue_name=queue_name)

    def shadow(self) -> Source:
        """Where a re-embed builds the next store (with its own queue) while this one keeps serving."""
        return replace(
            self, store_schema=SYNCER_SCHEMA, store_name=f"{self.name}_next", queue_name=f"{self.name}_reembed"
        )

    @property
    def index_name(self) -> str:
        return f"syncer_{self.name}_hnsw"

    @property
    def search_fn(self) -> sql.Identifier:
        return sql.Identifier(SYNCER_SCHEMA, f"search_{self.name}")

    def key_list(self, alias: str | None = None) -> sql.Composed:
        """``k1, k2`` or ``alias.k1, alias.k2``."""
        return sql.SQL(", ").join(_column(alias, k) for k in self.keys)

    def keys_equal(self, left: str, right: str) -> sql.Composed:
        """``left.k1 = right.k1 AND ...``: joins that use the key indexes."""
        return sql.SQL(" AND ").join(sql.SQL("{} = {}").format(_column(left, k), _column(right, k)) for k in self.keys)

    def text(self) -> sql.Composable:
        """SQL for the text to embed from row alias ``t``: NULL when there is nothing to embed."""
        if self.config.template is None:
            parts = [sql.SQL("nullif({}::text, '')").format(_column("t", c)) for c in self.config.columns]
            joined = sql.SQL("concat_ws({}, {})").format(sql.Literal(PARAGRAPH), sql.SQL(", ").join(parts))
            return sql.SQL("nullif(btrim({}, {}), '')").format(joined, sql.Literal(WHITESPACE))
        pieces: list[sql.Composable] = []
        for literal, field in template_pieces(self.config.template):
            if literal:
                pieces.append(sql.Literal(literal))
            if field:
                pieces.append(sql.SQL("{}::text").format(_column("t", field)))
        any_field = sql.SQL(", ").join(
            sql.SQL("nullif({}::text, '')").format(_column("t", f)) for f in self.config.text_columns
        )
        return sql.SQL("CASE WHEN num_nonnulls({}) = 0 THEN NULL ELSE nullif(btrim(concat({}), {}), '') END").format(
            any_field, sql.SQL(", ").join(pieces), sql.Literal(WHITESPACE)
        )

    @cached_property
    def _parts(self) -> dict[str, sql.Composable]:
        aliases = "tqec"  # source row, queue row, stored vector, claimed/current batch row
        joins = ("t_is_e", "q_is_p", "t_is_c", "e_is_c", "t_is_o", "e_is_g")
        return (
            {"table": self.table, "store": self.store, "queue": self.queue, "keys": self.key_list()}
            | {"text": self.text()}
            | {f"{a}_keys": self.key_list(a) for a in aliases}
            | {j: self.keys_equal(j[0], j[-1]) for j in joins}
        )

    def parts(self) -> dict[str, sql.Composable]:
        """Placeholders shared by the per-source SQL blocks (tables, key lists, key joins, text)."""
        return dict(self._parts)


def _column(alias: str | None, column: str) -> sql.Identifier:
    return sql.Identifier(alias, column) if alias else sql.Identifier(column)


def _split(qualified: str) -> tuple[str | None, str]:
    schema, _, name = qualified.rpartition(".")
    return (schema or None), name


def resolve(conn: psycopg.Connection, config: SourceConfig) -> Source:
    """Check a source against the catalog; a ConfigError names what is wrong."""
    schema, name = _split(config.table)
    found = conn.execute(query("sources", "find_table"), {"schema": schema, "name": name}).fetchone()
    if found is None:
        raise ConfigError(f"source {config.source_name!r}: table {config.table} does not exist")
    oid, schema, name, kind = found
    if kind not in ("r", "p"):
        raise ConfigError(f"source {config.source_name!r}: {schema}.{name} is not a table")
    columns = tuple(conn.execute(query("sources", "table_columns"), {"oid": oid}).fetchall())
    names = {c for c, _ in columns}
    for column in config.text_columns:
        if column not in names:
            raise ConfigError(f"source {config.source_name!r}: column {column!r} does not exist in {schema}.{name}")
    for column in RESERVED_COLUMNS:
        if column in names:
            raise ConfigError(
                f"source {config.source_name!r}: {schema}.{name} has a column named {column!r}, "
                "which the search function uses for its own parameters and result"
            )
    keys = config.key or tuple(r[0] for r in conn.execute(query("sources", "primary_key"), {"oid": oid}))
    if not keys:
        raise ConfigError(f"source {config.source_name!r}: {schema}.{name} has no primary key; add one or set 'key'")
    for column in keys:
        if column not in names:
            raise ConfigError(f"source {config.source_name!r}: key column {column!r} does not exist in {schema}.{name}")
    store_schema, store_name = _split(config.target) if config.target else (None, f"{name}_embeddings")
    queue_name = f"{config.source_name}_queue"
    return Source(config, schema, name, tuple(keys), columns, store_schema or schema, store_name, queue_name)


def _scalar(conn: psycopg.Connection, statement: sql.Composed, params: dict[str, Any]) -> Any:
    row = conn.execute(statement, params).fetchone()
    return row[0] if row else None


def exists(conn: psycopg.Connection, schema: str, name: str) -> bool:
    return bool(_scalar(conn, query("sources", "relation_exists"), {"schema": schema, "name": name}))


def check_store(conn: psycopg.Connection, source: Source, model_id: str, dimensions: int) -> bool:
    """Whether the store exists; raises if it was built for other vectors than the model makes."""
    row = conn.execute(
        query("sources", "store_dimensions"), {"schema": source.store_schema, "name": source.store_name}
    ).fetchone()
    if row is None:
        return False
    registered = conn.execute(query("sources", "registered"), {"name": source.name}).fetchone()
    if registered is not None and registered[0] != model_id:
        raise ConfigError(
            f"source {source.name!r}: store {source.qualified_store} was built with model {registered[0]}, "
            f"not the configured {model_id}; `syncer reembed {source.name}` re-embeds it with {model_id} "
            "while search goes on"
        )
    if row[0] != dimensions:
        raise ConfigError(
            f"source {source.name!r}: store {source.qualified_store} holds vector({row[0]}) "
            f"but model {model_id} makes {dimensions}-dimensional vectors"
        )
    return True


def create_tables(conn: psycopg.Connection, source: Source, model_id: str, dimensions: int) -> None:
    """Create the source's queue and store if missing; an existing store must suit the model."""
    create_queue(conn, source)
    if not check_store(conn, source, model_id, dimensions):
        create_store(conn, source, model_id, dimensions)


def create_queue(conn: psycopg.Connection, source: Source) -> None:
    if not exists(conn, SYNCER_SCHEMA, source.queue_name):
        conn.execute(query("sources", "create_queue", **source.parts()))


def create_store(conn: psycopg.Connection, source: Source, model_id: str, dimensions: int) -> None:
    """An empty store for ``dimensions``-long vectors that only ``model_id`` may write."""
    conn.execute(
        query(
            "sources", "create_store", **source.parts(), dimensions=sql.Literal(dimensions), model=sql.Literal(model_id)
        )
    )


def register(conn: psycopg.Connection, source: Source, model_id: str, dimensions: int) -> bool:
    """Record the source in syncer.sources; True the first time (its backfill is still to queue)."""
    conn.execute(
        query("sources", "register"),
        {
            "name": source.name,
            "source_table": source.qualified,
            "store_table": source.qualified_store,
            "model": model_id,
            "dimensions": dimensions,
            "config": Jsonb(source.config.model_dump(mode="json")),
        },
    )
    registered = conn.execute(query("sources", "registered"), {"name": source.name}).fetchone()
    return registered is None or registered[2] is None


def mark_backfilled(conn: psycopg.Connection, source: Source) -> None:
    conn.execute(query("sources", "mark_backfilled"), {"name": source.name})


def ensure_index(conn: psycopg.Connection, source: Source) -> bool:
    """Build the store's HNSW index if it is missing and no other worker is building it; True if built."""
    if exists(conn, source.store_schema, source.index_name):
        return False
    if not _scalar(conn, query("sources", "try_lock"), {"key": source.index_name}):
        return False
    if exists(conn, source.store_schema, source.index_name):
        return False
    log.info("building hnsw index %s on %s", source.index_name, source.qualified_store)
    conn.execute(query("sources", "create_index", store=source.store, index=sql.Identifier(source.index_name)))
    return True


def enqueue_missing(conn: psycopg.Connection, source: Source) -> int:
    """Queue every row with text but no vector (the backfill); returns how many were queued."""
    cur = conn.execute(query("queue", "enqueue_missing", **source.parts()))
    return cur.rowcount


def enqueue_stale(conn: psycopg.Connection, source: Source) -> int:
    """Queue every row whose stored vector is missing or not of its current text, and every orphaned
    vector: converges after changes that bypassed the triggers (or happened during a re-embed)."""
    queued = conn.execute(query("queue", "enqueue_stale", **source.parts())).rowcount
    return queued + conn.execute(query("queue", "enqueue_orphans", **source.parts())).rowcount


def drop(conn: psycopg.Connection, source: Source, objects: dict[str, sql.Composable]) -> None:
    """Remove the source's queue, store, ``objects`` (triggers, functions), and forget it."""
    conn.execute(query("sources", "drop", **source.parts(), **objects, search_fn=source.search_fn))
    conn.execute(query("sources", "forget"), {"name": source.name})
