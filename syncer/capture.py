"""Change capture: the triggers that record a source's changed keys and wake the workers.

On the writer's path, so kept cheap and safe. Three statement triggers (INSERT, UPDATE, DELETE,
over transition tables) append one row per statement to the source's change log, holding the keys
it changed; the workers move them into the queue, where repeated changes coalesce. A writer sends
NOTIFY only while a worker sleeps holding the wake lock (``WAKE_LOCK``), so concurrent writers never
queue up on NOTIFY's commit lock (``fragments.WAKE_LOCK``). TRUNCATE empties the queue, the log and the store.

A partitioned source keeps row triggers writing straight into the queue: PostgreSQL clones row
triggers to every partition, also those attached later, where a statement trigger of the
partitioned table does not fire for DML that names a partition.

The functions are SECURITY DEFINER with a pinned search_path, so the application's role needs no
privileges on syncer's objects.
"""

from __future__ import annotations

import hashlib
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
        "inserts_fn": sql.Identifier(SYNCER_SCHEMA, f"{name}_inserts_v1"),
        "deletes_fn": sql.Identifier(SYNCER_SCHEMA, f"{name}_deletes_v1"),
        "updates_fn": sql.Identifier(SYNCER_SCHEMA, f"{name}_updates_v1"),
        "capture_fn": sql.Identifier(SYNCER_SCHEMA, f"{name}_capture_v2"),  # 0.2's, for all three: dropped
        "rows_fn": sql.Identifier(SYNCER_SCHEMA, f"{name}_capture_v1"),
        "mark_fn": sql.Identifier(SYNCER_SCHEMA, f"{name}_mark_v1"),
        "truncate_fn": sql.Identifier(SYNCER_SCHEMA, f"{name}_truncate_v1"),
        "partition_truncate_fn": sql.Identifier(SYNCER_SCHEMA, f"{name}_truncate_partition_v1"),
        "inserts_trigger": sql.Identifier(f"syncer_{name}_inserts"),
        "updates_trigger": sql.Identifier(f"syncer_{name}_updates"),
        "deletes_trigger": sql.Identifier(f"syncer_{name}_deletes"),
        "mark_trigger": sql.Identifier(f"syncer_{name}_mark"),  # sorts before _updates: it fires first
        "rows_trigger": sql.Identifier(f"syncer_{name}_rows"),
        "truncate_trigger": sql.Identifier(f"syncer_{name}_truncate"),
        "notify_trigger": sql.Identifier(f"syncer_{name}_notify"),
    }


def _parts(source: Source) -> dict[str, sql.Composable]:
    watched = tuple(dict.fromkeys(source.config.text_columns + source.keys))
    first = source.keys[0]
    return (
        fragments.parts(source)
        | objects(source)
        | {
            "old_keys": fragments.key_list(source, "old"),
            "new_keys": fragments.key_list(source, "new"),
            "watched": sql.SQL(", ").join(map(sql.Identifier, watched)),
            "old_watched": _watched(source, "old", watched),
            "new_watched": _watched(source, "new", watched),
            "o_key": sql.Identifier("o", first),
            "n_key": sql.Identifier("n", first),
            "o_compared": _watched(source, "o", watched),
            "n_compared": _watched(source, "n", watched),
            # a custom setting's name must be an identifier, and a source name need not be one
            "mark_setting": sql.Literal(f"syncer.mark_{hashlib.sha256(source.name.encode()).hexdigest()[:16]}"),
        }
    )


def _watched(source: Source, row: str, watched: tuple[str, ...]) -> sql.Composed:
    """The watched columns of ``row``; embedded ones as their text, so that a change of text that the type's
    equality ignores (numeric 1.5 -> 1.50, citext case, a nondeterministic collation) is a change too."""
    text = set(source.config.text_columns)
    return sql.SQL(", ").join(
        sql.SQL("{}::text").format(sql.Identifier(row, c)) if c in text else sql.Identifier(row, c) for c in watched
    )


def guarded(conn: psycopg.Connection, source: Source) -> bool:
    """Whether an UPDATE naming no watched column may skip the comparison: only when no BEFORE UPDATE row
    trigger of the table's own could rewrite an embedded column the UPDATE did not name."""
    if source.partitioned:
        return False
    row = conn.execute(query("capture", "before_update_triggers"), {"table": source.table.as_string(conn)}).fetchone()
    return row is not None and row[0] == 0


def render(conn: psycopg.Connection, source: Source, notify: bool) -> list[sql.Composed]:
    """The statements that create or replace the source's triggers (``notify=False``: poll only)."""
    parts = _parts(source)
    if source.partitioned:
        blocks = ["capture_rows", "notify" if notify else "drop_notify", "truncate", "partition_truncate"]
        return [query("capture", block, **parts) for block in blocks]
    guard = guarded(conn, source)
    update_guard = query("capture", "update_guard", **parts) if guard else sql.SQL("")
    wake = query("capture", "wake", **parts)
    statements = [
        query("capture", "append", **parts, append_fn=parts[fn], rows=sql.Identifier(rows), wake=wake)
        for fn, rows in (("inserts_fn", "syncer_new"), ("deletes_fn", "syncer_old"))
    ]
    statements += [query("capture", "capture", **parts, update_guard=update_guard, wake=wake)]
    statements += [query("capture", "mark", **parts)] if guard else []
    return statements + [query("capture", "truncate", **parts)]


def signatures(conn: psycopg.Connection, source: Source, notify: bool) -> tuple[list[str], list[str]]:
    """(trigger names on the table, function signatures) that must exist once installed."""
    names = objects(source)
    if source.partitioned:
        kinds, functions = ["rows", "updates", "truncate"], ["rows_fn", "truncate_fn", "partition_truncate_fn"]
        kinds += ["notify"] if notify else []
    else:
        kinds = ["inserts", "updates", "deletes", "truncate"]
        functions = ["inserts_fn", "deletes_fn", "updates_fn", "truncate_fn"]
        if guarded(conn, source):
            kinds, functions = kinds + ["mark"], functions + ["mark_fn"]
    triggers = [f"syncer_{source.name}_{kind}" for kind in kinds]
    return triggers, [sql.SQL("{}()").format(names[f]).as_string(None) for f in functions]


def install(conn: psycopg.Connection, source: Source, notify: bool) -> int:
    """Create or replace the triggers (``notify=False``: no NOTIFY, poll only).

    Returns how many partitions got their TRUNCATE trigger now: partitions created or attached
    since the last apply (their rows may need queuing).
    """
    for statement in render(conn, source, notify):
        conn.execute(statement)
    if not source.partitioned:
        # DROP TRIGGER locks the table ACCESS EXCLUSIVE even when there is nothing to drop: only what is there
        present = set(_triggers(conn, source))
        if f"syncer_{source.name}_rows" in present:
            conn.execute(query("capture", "drop_rows", **_parts(source)))
        if f"syncer_{source.name}_mark" in present and not guarded(conn, source):
            conn.execute(query("capture", "drop_mark", **_parts(source)))
    missing = missing_partitions(conn, source)
    for schema, name in missing:
        log.info("%s: TRUNCATE trigger on partition %s.%s", source.name, schema, name)
        partition = sql.Identifier(schema, name)
        conn.execute(query("capture", "partition_trigger", **_parts(source), partition=partition))
    return len(missing)


def _triggers(conn: psycopg.Connection, source: Source) -> list[str]:
    rows = conn.execute(query("capture", "triggers"), {"table": source.table.as_string(conn)})
    return [row[0] for row in rows]


def missing_partitions(conn: psycopg.Connection, source: Source) -> list[tuple[str, str]]:
    """Partitions (at any depth) of a partitioned source that lack syncer's TRUNCATE trigger."""
    if not source.partitioned:
        return []
    params = {"schema": source.schema, "name": source.table_name, "trigger": f"syncer_{source.name}_truncate"}
    return [(schema, name) for schema, name in conn.execute(query("capture", "partitions"), params)]


def drop(conn: psycopg.Connection, source: Source) -> None:
    """Remove the source's triggers and their functions; the table and its rows stay."""
    conn.execute(query("capture", "drop", **fragments.parts(source), **objects(source)))
