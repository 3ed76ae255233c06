"""Change capture: the triggers that record a source's changed keys in its queue and wake the workers.

On the writer's path, so kept cheap and safe: row triggers append the key (coalescing repeated
edits of a key into one queue row), one statement trigger sends a constant NOTIFY, and TRUNCATE
empties the queue and the store (of a partition: queues the keys whose rows it removed). The
functions are SECURITY DEFINER with a pinned search_path, so the application's role needs no
privileges on syncer's objects.
"""

from __future__ import annotations

import logging

import psycopg
from psycopg import sql

from . import fragments
from .queries import query
from .sources import SYNCER_SCHEMA, Source

log = logging.getLogger(__name__)


def objects(source: Source) -> dict[str, sql.Composable]:
    """Names of the source's trigger functions and triggers."""
    name = source.name
    return {
        "capture_fn": sql.Identifier(SYNCER_SCHEMA, f"{name}_capture_v1"),
        "truncate_fn": sql.Identifier(SYNCER_SCHEMA, f"{name}_truncate_v1"),
        "partition_truncate_fn": sql.Identifier(SYNCER_SCHEMA, f"{name}_truncate_partition_v1"),
        "rows_trigger": sql.Identifier(f"syncer_{name}_rows"),
        "updates_trigger": sql.Identifier(f"syncer_{name}_updates"),
        "truncate_trigger": sql.Identifier(f"syncer_{name}_truncate"),
        "notify_trigger": sql.Identifier(f"syncer_{name}_notify"),
    }


def _parts(source: Source) -> dict[str, sql.Composable]:
    watched = tuple(dict.fromkeys(source.config.text_columns + source.keys))
    return (
        fragments.parts(source)
        | objects(source)
        | {
            "old_keys": fragments.key_list(source, "old"),
            "new_keys": fragments.key_list(source, "new"),
            "watched": sql.SQL(", ").join(map(sql.Identifier, watched)),
            "old_watched": _watched(source, "old", watched),
            "new_watched": _watched(source, "new", watched),
            "name": sql.Literal(source.name),
        }
    )


def _watched(source: Source, row: str, watched: tuple[str, ...]) -> sql.Composed:
    """The watched columns of ``row``; embedded ones as their text, so that a change of text that the type's
    equality ignores (numeric 1.5 -> 1.50, citext case, a nondeterministic collation) is a change too."""
    text = set(source.config.text_columns)
    return sql.SQL(", ").join(
        sql.SQL("{}::text").format(sql.Identifier(row, c)) if c in text else sql.Identifier(row, c) for c in watched
    )


def render(source: Source, notify: bool) -> list[sql.Composed]:
    """The statements that create or replace the source's triggers (``notify=False``: poll only)."""
    blocks = ["capture", "truncate", "notify" if notify else "drop_notify"]
    blocks += ["partition_truncate"] if source.partitioned else []
    parts = _parts(source)
    return [query("capture", block, **parts) for block in blocks]


def signatures(source: Source, notify: bool) -> tuple[list[str], list[str]]:
    """(trigger names on the table, function signatures) that must exist once installed."""
    names = objects(source)
    triggers = [f"syncer_{source.name}_{kind}" for kind in ("rows", "updates", "truncate")]
    triggers += [f"syncer_{source.name}_notify"] if notify else []
    functions = [names["capture_fn"], names["truncate_fn"]]
    functions += [names["partition_truncate_fn"]] if source.partitioned else []
    return triggers, [sql.SQL("{}()").format(f).as_string(None) for f in functions]


def install(conn: psycopg.Connection, source: Source, notify: bool) -> int:
    """Create or replace the triggers (``notify=False``: no NOTIFY, poll only).

    Returns how many partitions got their TRUNCATE trigger now: partitions created or attached
    since the last apply (their rows may need queuing).
    """
    for statement in render(source, notify):
        conn.execute(statement)
    missing = missing_partitions(conn, source)
    for schema, name in missing:
        log.info("%s: TRUNCATE trigger on partition %s.%s", source.name, schema, name)
        partition = sql.Identifier(schema, name)
        conn.execute(query("capture", "partition_trigger", **_parts(source), partition=partition))
    return len(missing)


def missing_partitions(conn: psycopg.Connection, source: Source) -> list[tuple[str, str]]:
    """Partitions (at any depth) of a partitioned source that lack syncer's TRUNCATE trigger."""
    if not source.partitioned:
        return []
    params = {"schema": source.schema, "name": source.table_name, "trigger": f"syncer_{source.name}_truncate"}
    return [(schema, name) for schema, name in conn.execute(query("capture", "partitions"), params)]


def drop(conn: psycopg.Connection, source: Source) -> None:
    """Remove the source's triggers and their functions; the table and its rows stay."""
    conn.execute(query("capture", "drop", **fragments.parts(source), **objects(source)))
