"""What has been applied, per source: its model, its text definition, its backfill, a re-embed under way.

The registry row is the truth workers fence on: a settle holds it (FOR SHARE) and writes only if
the worker's model and text definition are still the applied ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
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

    def model_of(self, source: Source) -> str | None:
        """The model whose vectors ``source``'s store takes (a re-embed's shadow store: the new one)."""
        return self.reembed_model if source.shadow else self.model


def read(conn: psycopg.Connection, name: str, *, lock: bool = False) -> Registration | None:
    statement = query("registry", "read")
    if lock:
        statement = sql.Composed([statement, sql.SQL(" FOR SHARE")])
    row = conn.execute(statement, {"name": name}).fetchone()
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


def mark_backfilled(conn: psycopg.Connection, source: Source) -> None:
    conn.execute(query("registry", "mark_backfilled"), {"name": source.name})


def forget(conn: psycopg.Connection, source: Source) -> None:
    conn.execute(query("registry", "forget"), {"name": source.name})


def fence(conn: psycopg.Connection, source: Source, model_id: str) -> None:
    """In a settle's transaction: hold the registry row, and refuse to write if this worker is superseded."""
    registration = read(conn, source.name, lock=True)
    if registration is None:
        raise StoreChanged(f"source {source.name!r} is no longer applied (dropped): this worker stops")
    confirm_model(registration, source, model_id)
    if registration.definition is not None and registration.definition != source.definition:
        raise StoreChanged(
            f"source {source.name!r} now embeds {describe(registration.definition)}, not this worker's "
            f"{describe(source.definition)} (a new definition was adopted): restart it with the new configuration"
        )


def confirm_model(registration: Registration, source: Source, model_id: str) -> None:
    """Raise ``StoreChanged`` if the registry says ``source``'s store takes another model's vectors."""
    expected = registration.model_of(source)
    if expected != model_id:
        raise StoreChanged(
            f"{source.qualified_store} takes {expected} vectors now, not {model_id}: it was re-embedded; "
            "restart this worker with the store's model"
        )
