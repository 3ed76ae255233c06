"""What has been applied, per source: its model, its text definition, its backfill, a re-embed under way.

The registry row is the truth workers fence on: a settle holds it (FOR SHARE) and writes only if
the worker's model and text definition are still the applied ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from .errors import StoreChanged
from .queries import query
from .sources import Source, describe


@dataclass(frozen=True)
class Registration:
    name: str
    model: str
    dimensions: int
    definition: dict[str, Any] | None  # None: recorded before definitions were (adopted at the next apply)
    backfilled: bool
    reembed_model: str | None
    reembed_dimensions: int | None
    objects: str | None  # fingerprint of the installed objects
    source_table: str
    store_table: str


def read(conn: psycopg.Connection, name: str) -> Registration | None:
    row = conn.execute(query("registry", "read"), {"name": name}).fetchone()
    return Registration(*row) if row else None


def record(conn: psycopg.Connection, source: Source, model_id: str, dimensions: int) -> Registration:
    """Record the source if it is new; returns what the registry holds now."""
    conn.execute(
        query("registry", "record"),
        {
            "name": source.name,
            "source_table": source.qualified,
            "store_table": source.qualified_store,
            "model": model_id,
            "dimensions": dimensions,
            "config": Jsonb(source.config.model_dump(mode="json")),
            "definition": Jsonb(source.definition),
        },
    )
    registration = read(conn, source.name)
    assert registration is not None
    return registration


def adopt(conn: psycopg.Connection, source: Source) -> None:
    """Make ``source``'s text definition the applied one (workers on another one stop writing)."""
    params = {"name": source.name, "definition": Jsonb(source.definition)}
    conn.execute(query("registry", "adopt"), params | {"config": Jsonb(source.config.model_dump(mode="json"))})


def lock(conn: psycopg.Connection, source: Source) -> None:
    conn.execute(query("registry", "lock"), {"name": source.name})


def store_taken_by(conn: psycopg.Connection, source: Source) -> str | None:
    """The name of another applied source whose store is this source's store."""
    row = conn.execute(query("registry", "store_owner"), {"store": source.qualified_store, "name": source.name})
    found = row.fetchone()
    return found[0] if found else None


def installed(conn: psycopg.Connection, source: Source, objects: str) -> None:
    conn.execute(query("registry", "installed"), {"name": source.name, "objects": objects})


def mark_backfilled(conn: psycopg.Connection, source: Source) -> None:
    conn.execute(query("registry", "mark_backfilled"), {"name": source.name})


def forget(conn: psycopg.Connection, source: Source) -> None:
    conn.execute(query("registry", "forget"), {"name": source.name})


def fence(conn: psycopg.Connection, source: Source, model_id: str) -> None:
    """In a settle's transaction: hold the registry row, and refuse to write if this worker is superseded."""
    row = conn.execute(query("registry", "fence"), {"name": source.name}).fetchone()
    if row is None:
        raise StoreChanged(f"source {source.name!r} is no longer applied (dropped): this worker stops")
    model, reembed_model, definition = row
    expected = reembed_model if source.shadow else model
    if expected != model_id:
        raise StoreChanged(
            f"{source.qualified_store} takes {expected} vectors now, not {model_id}: it was re-embedded; "
            "restart this worker with the store's model"
        )
    if definition is not None and definition != source.definition:
        raise StoreChanged(
            f"source {source.name!r} now embeds {describe(definition)}, not this worker's "
            f"{describe(source.definition)} (a new definition was adopted): restart it with the new configuration"
        )
