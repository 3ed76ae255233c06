"""Resolve a configured source against the live catalog, refusing what syncer cannot serve safely.

Each refusal is a ``ConfigError`` that names the table or column and the fix. Nothing is changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from .database import transaction
from .errors import ConfigError
from .queries import query
from .settings import SourceConfig
from .sources import Source

# The search functions' own parameters and result columns: a source column of the same name would clash.
RESERVED_COLUMNS = (
    "query_embedding", "match_count", "filter", "chunks_per_row", "similarity", "match_chunk", "match_start",
    "match_end", "match_text", "query_text", "full_text_weight", "semantic_weight", "rrf_k", "candidates",
    "rrf_score", "text_rank",
)  # fmt: skip
TEXT_TYPES = ("text", "varchar", "bpchar")
MAX_IDENTIFIER = 63  # bytes: PostgreSQL cuts longer names


@dataclass(frozen=True)
class Column:
    name: str
    sql_type: str
    not_null: bool
    type_schema: str  # of the type beneath any domains
    type_name: str
    type_kind: str  # pg_type.typtype: b base, d domain, e enum, c composite, ...
    category: str  # pg_type.typcategory: A array, S string, N numeric, D date/time, U json, bytea, uuid, ...
    citext: bool

    @property
    def text_like(self) -> bool:
        return self.citext or (self.type_schema == "pg_catalog" and self.type_name in TEXT_TYPES)

    @property
    def built_in_scalar(self) -> bool:
        """Numbers, dates, booleans and the like: built-in types whose text is meant to be read."""
        readable = self.category not in ("A", "U") or self.type_name == "uuid"
        return self.type_schema == "pg_catalog" and self.type_kind == "b" and readable


def check_database(conn: psycopg.Connection) -> None:
    row = conn.execute(query("catalog", "database")).fetchone()
    if row is None or row[0] != "UTF8":
        raise ConfigError(f"the database's encoding is {row[0] if row else '?'}; syncer needs a UTF8 database")


def resolve(conn: psycopg.Connection, config: SourceConfig) -> Source:
    """Check a source against the catalog; a ConfigError names what is wrong.

    A bare table name is found with the session's own search_path, as the application finds it;
    everything after that with syncer's pinned one (types outside pg_catalog come out qualified).
    """
    schema, _, name = config.table.rpartition(".")
    found = conn.execute(query("catalog", "find_table"), {"schema": schema or None, "name": name}).fetchone()
    if found is None:
        raise ConfigError(f"source {config.source_name!r}: table {config.table} does not exist")
    with transaction(conn):
        return _resolve(conn, config, *found)


def _resolve(conn: psycopg.Connection, config: SourceConfig, oid: int, schema: str, name: str, kind: str) -> Source:
    if kind not in ("r", "p"):
        raise ConfigError(f"source {config.source_name!r}: {schema}.{name} is not a table")
    where = f"source {config.source_name!r}: "
    qualified = f"{schema}.{name}"
    columns = {
        c.name: c for c in (Column(*row) for row in conn.execute(query("catalog", "table_columns"), {"oid": oid}))
    }
    _check_text_columns(where, qualified, config, columns)
    for reserved in RESERVED_COLUMNS:
        if reserved in columns:
            raise ConfigError(
                f"{where}{qualified} has a column named {reserved!r}, "
                "which the search functions use for their own parameters and results"
            )
    keys = _check_key(conn, where, qualified, oid, config, columns)
    if not _scalar(conn, query("catalog", "search_config"), {"name": config.search_config}):
        raise ConfigError(
            f"{where}search_config {config.search_config!r} is not a text search configuration of pg_catalog "
            "(simple, english, german, ...: SELECT cfgname FROM pg_ts_config)"
        )
    _check_row_security(conn, where, qualified, oid)
    store_schema, _, store_name = (config.target or f"{schema}.{name}_embeddings").rpartition(".")
    if len(store_name.encode()) > MAX_IDENTIFIER:
        raise ConfigError(
            f"{where}the store's name {store_name} is longer than PostgreSQL's {MAX_IDENTIFIER} bytes: set 'target'"
        )
    return Source(
        config,
        schema,
        name,
        keys,
        tuple((c.name, c.sql_type) for c in columns.values()),
        store_schema or schema,
        store_name,
        f"{config.source_name}_queue",
        vector_schema=_scalar(conn, query("catalog", "vector_schema"), {}),
        partitioned=kind == "p",
    )


def _check_text_columns(where: str, table: str, config: SourceConfig, columns: dict[str, Column]) -> None:
    for name in config.text_columns:
        column = columns.get(name)
        if column is None:
            raise ConfigError(f"{where}column {name!r} does not exist in {table}")
        if column.text_like or (config.template is not None and column.built_in_scalar):
            continue
        raise ConfigError(
            f"{where}column {name!r} of {table} is {column.sql_type}: {_type_advice(config, column, table)}"
        )


def _type_advice(config: SourceConfig, column: Column, table: str) -> str:
    generated = (
        f"embed a generated text column instead, e.g. ALTER TABLE {table} ADD COLUMN {column.name}_text text "
        f"GENERATED ALWAYS AS (...) STORED"
    )
    if column.type_schema != "pg_catalog" and not column.citext:
        return f"its conversion to text would run code of the type's owner as syncer; {generated}"
    if column.category in ("A", "U"):
        return f"only text-like values are embedded; {generated}"
    if config.template is None:
        return (
            "only text, varchar, char and citext columns are embedded as they are; "
            'use a template, e.g. "{title} ({year})"'
        )
    return f"only text-like and built-in scalar values fill a template; {generated}"


def _check_key(
    conn: psycopg.Connection, where: str, table: str, oid: int, config: SourceConfig, columns: dict[str, Column]
) -> tuple[str, ...]:
    keys = config.key or tuple(r[0] for r in conn.execute(query("catalog", "primary_key"), {"oid": oid}))
    if not keys:
        raise ConfigError(f"{where}{table} has no primary key; add one or set 'key'")
    for name in keys:
        column = columns.get(name)
        if column is None:
            raise ConfigError(f"{where}key column {name!r} does not exist in {table}")
        if not column.not_null:
            raise ConfigError(
                f"{where}key column {name!r} of {table} may be NULL: "
                f"ALTER TABLE {table} ALTER COLUMN {name} SET NOT NULL, or choose another key"
            )
        if not (column.type_schema == "pg_catalog" and column.type_kind == "b"):
            raise ConfigError(
                f"{where}key column {name!r} of {table} is {column.sql_type}: keys must be of built-in types"
            )
    if not _scalar(conn, query("catalog", "unique_key"), {"oid": oid, "keys": list(keys)}):
        raise ConfigError(
            f"{where}key ({', '.join(keys)}) of {table} is not unique: no unique index covers it; "
            f"CREATE UNIQUE INDEX ON {table} ({', '.join(keys)}), or choose another key"
        )
    return tuple(keys)


def _check_row_security(conn: psycopg.Connection, where: str, table: str, oid: int) -> None:
    hidden, forced, owner, user = conn.execute(query("catalog", "row_security"), {"oid": oid}).fetchone()  # type: ignore[misc]
    if not hidden:
        return
    fix = f"ALTER ROLE {user} BYPASSRLS, or run syncer as the table's owner ({owner})"
    if forced:
        fix += f" after ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY"
    raise ConfigError(
        f"{where}row-level security on {table} hides rows from role {user}, and a row syncer cannot see "
        f"would look deleted (its vector removed); let syncer see every row: {fix}"
    )


def check_store_security(conn: psycopg.Connection, source: Source) -> None:
    """A store under row-level security would hide vectors from the worker that maintains them."""
    oid = relation(conn, source.store_schema, source.store_name)
    if oid is not None:
        _check_row_security(conn, f"source {source.name!r}: ", source.qualified_store, oid)


def relation(conn: psycopg.Connection, schema: str, name: str) -> int | None:
    return _scalar(conn, query("catalog", "relation"), {"schema": schema, "name": name})


def exists(conn: psycopg.Connection, schema: str, name: str) -> bool:
    return relation(conn, schema, name) is not None


def store_dimensions(conn: psycopg.Connection, source: Source) -> int | None:
    return _scalar(
        conn, query("catalog", "store_dimensions"), {"schema": source.store_schema, "name": source.store_name}
    )


def _scalar(conn: psycopg.Connection, statement: sql.Composed, params: dict[str, Any]) -> Any:
    row = conn.execute(statement, params).fetchone()
    return row[0] if row else None


def installed(conn: psycopg.Connection, source: Source, triggers: list[str], functions: list[str]) -> bool:
    """Whether the source's tables, triggers and functions all exist."""
    params = {
        "queue": source.queue.as_string(None),
        "store": source.store.as_string(None),
        "table": source.table.as_string(None),
        "triggers": triggers,
        "functions": functions,
    }
    return bool(_scalar(conn, query("catalog", "installed"), params))


def lock_holders(conn: psycopg.Connection, source: Source) -> str | None:
    """Who holds locks on the source table (or its queue) that DDL waits for, in words."""
    params = {"table": source.table.as_string(None), "queue": source.queue.as_string(None)}
    return _scalar(conn, query("catalog", "lock_holders"), params)
