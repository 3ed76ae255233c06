"""`syncer grant worker|reader ROLE`: exactly the privileges each role needs, as statements a DBA can read.

The owner (who ran `syncer apply`) runs them. The worker reads the sources' key and embedded columns,
works the queues and writes the stores; it owns nothing and may create nothing. The reader calls the
search functions and reads the stores' key and vector columns.
"""

from __future__ import annotations

import logging
from typing import Literal

import psycopg
from psycopg import sql

from . import fragments, search, tables
from .database import transaction
from .errors import ConfigError
from .queries import query
from .sources import SYNCER_SCHEMA, Source

log = logging.getLogger(__name__)

Kind = Literal["worker", "reader"]


def statements(conn: psycopg.Connection, kind: Kind, role: str, source_list: list[Source]) -> list[str]:
    """The GRANT statements that give ``role`` what a ``kind`` needs for ``source_list``."""
    with transaction(conn):
        row = conn.execute(query("grants", "role"), {"role": role}).fetchone()
        if row is None:
            raise ConfigError(f"role {role!r} does not exist: CREATE ROLE {role} LOGIN first")
        schemas = sorted({s for source in source_list for s in _schemas(source)})
        lacking = [r[0] for r in conn.execute(query("grants", "lacks_usage"), {"schemas": schemas, "role": role})]
    name = sql.Identifier(role)
    rendered = [query("grants", "schema_usage", schema=sql.Identifier(s), role=name) for s in lacking]
    if kind == "worker":
        rendered.append(query("grants", "worker_schema", role=name))
    rendered += [_per_source(kind, source, name) for source in source_list]
    return [s.strip() for statement in rendered for s in statement.as_string(conn).split(";\n")]


def _schemas(source: Source) -> list[str]:
    return [s for s in (source.schema, source.store_schema, source.vector_schema) if s and s != SYNCER_SCHEMA]


def _per_source(kind: Kind, source: Source, role: sql.Identifier) -> sql.Composed:
    parts = fragments.parts(source)
    if kind == "reader":
        functions = sql.SQL(", ").join(sql.SQL(signature) for signature in search.signatures(source).values())
        return query("grants", "reader_source", **parts, role=role, functions=functions)
    read = tuple(dict.fromkeys(source.keys + source.config.text_columns))
    columns = sql.SQL(", ").join(map(sql.Identifier, read))
    index_fn = tables.index_parts(source)["index_fn"]
    return query("grants", "worker_source", **parts, role=role, columns=columns, index_fn=index_fn)


def grant(conn: psycopg.Connection, kind: Kind, role: str, source_list: list[Source]) -> list[str]:
    """Run the statements (in one transaction) and return them."""
    granted = statements(conn, kind, role, source_list)
    with transaction(conn):
        for statement in granted:
            conn.execute(statement)  # type: ignore[arg-type]  # rendered above from sql.Identifier parts
    return granted
