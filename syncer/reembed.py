"""Re-embed a source with another model while search keeps serving the current store.

The new vectors go to a shadow store with a queue of its own (``syncer.<name>_next`` and
``syncer.<name>_reembed``), filled by the ordinary claim/embed/settle loop, so it shows progress,
resumes after an interruption and can run on several processes. Rows edited meanwhile are caught
up, then one transaction swaps the shadow in and drops the old store. Each store admits only its
own model's vectors (a CHECK constraint), so a worker still running the old model cannot mix
vectors into the new store: it stops with a message instead.
"""

from __future__ import annotations

import logging

import psycopg
from psycopg import sql

from . import queue, registry, schema, search, tables
from .catalog import exists
from .database import Database, transaction
from .errors import ConfigError
from .providers import Provider
from .queries import query
from .settings import Settings
from .sources import Source
from .worker import Worker, WorkerOptions, backlog_progress

log = logging.getLogger(__name__)

CATCH_UP_ROUNDS = 3  # passes over rows edited during the re-embed before the switch queues the rest


def reembed(db: Database, settings: Settings, provider: Provider, source: Source) -> int:
    """Build the shadow store with ``provider``, catch up, switch; returns the rows embedded."""
    shadow = source.as_shadow()
    with db.connect() as conn:
        _refuse_dependents(conn, source)
        with transaction(conn):
            schema.lock_applies(conn)
            _begin(conn, source, shadow, provider)
        queued = queue.enqueue(conn, shadow, "missing")
    log.info("re-embedding %s with %s: %d rows queued", source.name, provider.model_id, queued)
    embedded = _drain(db, settings, provider, shadow)
    for _ in range(CATCH_UP_ROUNDS):
        with db.connect() as conn:
            stale = queue.enqueue(conn, shadow, "stale")
        if not stale:
            break
        embedded += _drain(db, settings, provider, shadow)
    with db.connect() as conn, transaction(conn):
        schema.lock_applies(conn)
        _switch(conn, source, shadow)
    log.info("%s now holds %s vectors", source.qualified_store, provider.model_id)
    return embedded


def _refuse_dependents(conn: psycopg.Connection, source: Source) -> None:
    """Before any work: what a switch could not carry to the new store (it would fail, or lose it)."""
    with transaction(conn):
        params = {
            "store": source.store.as_string(None),
            "index": f"{source.store_schema}.{source.index_name}",
            "fts_index": f"{source.store_schema}.{tables.fts_index_name(source)}",
            "chunk_index": f"{source.store_schema}.{tables.chunk_index_name(source)}",
        }
        if not exists(conn, source.store_schema, source.store_name):
            return
        found = [row[0] for row in conn.execute(query("reembed", "dependents"), params)]
    if found:
        raise ConfigError(
            f"source {source.name!r}: {source.qualified_store} has {', '.join(found)}, which a re-embed cannot "
            "carry over to the new store; drop them, re-embed, then create them again"
        )


def _begin(conn: psycopg.Connection, source: Source, shadow: Source, provider: Provider) -> None:
    registration = registry.read(conn, source.name)
    if registration is None:
        raise ConfigError(f"source {source.name!r} has no store yet: `syncer run` or `syncer apply` creates it")
    model, reembed_model = registration.model, registration.reembed_model
    if model == provider.model_id and reembed_model is None:
        raise ConfigError(f"source {source.name!r} is already embedded with {model}: nothing to re-embed")
    if reembed_model not in (None, provider.model_id):
        log.warning("abandoning the unfinished re-embed of %s with %s", source.name, reembed_model)
        conn.execute(query("reembed", "discard", store=shadow.store, queue=shadow.queue))
    params = {"name": source.name, "model": provider.model_id, "dimensions": provider.dimensions}
    conn.execute(query("reembed", "begin"), params)
    tables.create_queue(conn, shadow)
    tables.create_store(conn, shadow, provider.model_id, provider.dimensions)
    tables.install_index_function(conn, shadow)


def _drain(db: Database, settings: Settings, provider: Provider, shadow: Source) -> int:
    worker = Worker(db, provider, [shadow], WorkerOptions.from_settings(settings), backlog_progress(db, [shadow]))
    worker.run(once=True)
    return worker.embedded


def _switch(conn: psycopg.Connection, source: Source, shadow: Source) -> None:
    # The registry first: settles in flight (which hold its row) finish before the switch, and any later
    # settle of an old-model worker finds the new model there and stops (no lock-order deadlock).
    conn.execute(query("reembed", "finish"), {"name": source.name})
    # Rows edited since the last catch-up go to the live queue: the new model's workers embed them.
    queue.enqueue(conn, shadow.with_queue(source.queue_name), "stale", batched=False)
    store = source.store.as_string(None)
    params = {"store": store, "target": store, "schema": source.store_schema, "name": source.store_name}
    carried = [row[0] for row in conn.execute(query("reembed", "carried"), params)]
    conn.execute(
        query(
            "reembed",
            "switch",
            store=source.store,
            shadow=shadow.store,
            shadow_queue=shadow.queue,
            store_name=sql.Identifier(source.store_name),
            renamed=sql.Identifier(shadow.store_schema, source.store_name),
            store_schema=sql.Identifier(source.store_schema),
        )
    )
    for statement in carried:  # the new store keeps the old one's owner, grants, policies and comment
        conn.execute(statement)
    tables.drop_index_function(conn, shadow)
    search.install(conn, source)
