"""Change capture: the triggers that record a source's changed keys in its queue and wake the workers.

On the writer's path, so kept cheap and safe: row triggers append the key (coalescing repeated
edits of a key into one queue row), one statement trigger sends a constant NOTIFY, and TRUNCATE
empties the queue and the store. The functions are SECURITY DEFINER with a pinned search_path,
so the application's role needs no privileges on syncer's objects.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from .queries import query
from .sources import SYNCER_SCHEMA, Source


def objects(source: Source) -> dict[str, sql.Composable]:
    """Names of the source's trigger functions and triggers."""
    name = source.name
    return {
        "capture_fn": sql.Identifier(SYNCER_SCHEMA, f"{name}_capture_v1"),
        "truncate_fn": sql.Identifier(SYNCER_SCHEMA, f"{name}_truncate_v1"),
        "rows_trigger": sql.Identifier(f"syncer_{name}_rows"),
        "updates_trigger": sql.Identifier(f"syncer_{name}_updates"),
        "truncate_trigger": sql.Identifier(f"syncer_{name}_truncate"),
        "notify_trigger": sql.Identifier(f"syncer_{name}_notify"),
    }


def install(conn: psycopg.Connection, source: Source, notify: bool) -> None:
    """Create or replace the triggers; ``notify=False`` removes the NOTIFY (poll-only mode)."""
    watched = tuple(dict.fromkeys(source.config.text_columns + source.keys))
    parts = (
        source.parts()
        | objects(source)
        | {
            "old_keys": source.key_list("old"),
            "new_keys": source.key_list("new"),
            "watched": sql.SQL(", ").join(map(sql.Identifier, watched)),
            "old_watched": sql.SQL(", ").join(sql.Identifier("old", c) for c in watched),
            "new_watched": sql.SQL(", ").join(sql.Identifier("new", c) for c in watched),
            "name": sql.Literal(source.name),
        }
    )
    conn.execute(query("capture", "capture", **parts))
    conn.execute(query("capture", "truncate", **parts))
    conn.execute(query("capture", "notify" if notify else "drop_notify", **parts))
