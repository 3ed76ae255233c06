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

from . import schema, search, sources
from .database import Database
from .providers import Provider
from .queries import query
from .settings import ConfigError, Settings
from .worker import Worker, backlog_progress

log = logging.getLogger(__name__)

CATCH_UP_ROUNDS = 3  # passes over rows edited during the re-embed before the switch queues the rest


def reembed(db: Database, settings: Settings, provider: Provider, source: sources.Source) -> int:
    """Build the shadow store with ``provider``, catch up, switch; returns the rows embedded."""
    shadow = source.shadow()
    with schema.apply_lock(db), db.connect() as conn:
        _begin(conn, source, shadow, provider)
        conn.commit()
    embedded = _drain(db, settings, provider, shadow)
    for _ in range(CATCH_UP_ROUNDS):
        with db.connect() as conn:
            stale = sources.enqueue_stale(conn, shadow)
            conn.commit()
        if not stale:
            break
        embedded += _drain(db, settings, provider, shadow)
    with schema.apply_lock(db), db.connect() as conn:
        _switch(conn, source, shadow)
        conn.commit()
    log.info("%s now holds %s vectors", source.qualified_store, provider.model_id)
    return embedded


def _begin(conn: psycopg.Connection, source: sources.Source, shadow: sources.Source, provider: Provider) -> None:
    registered = conn.execute(query("sources", "registered"), {"name": source.name}).fetchone()
    if registered is None:
        raise ConfigError(f"source {source.name!r} has no store yet: `syncer run` or `syncer apply` creates it")
    model, _, _, reembed_model = registered
    if model == provider.model_id and reembed_model is None:
        raise ConfigError(f"source {source.name!r} is already embedded with {model}: nothing to re-embed")
    if reembed_model not in (None, provider.model_id):
        log.warning("abandoning the unfinished re-embed of %s with %s", source.name, reembed_model)
        conn.execute(query("reembed", "discard", store=shadow.store, queue=shadow.queue))
    params = {"name": source.name, "model": provider.model_id, "dimensions": provider.dimensions}
    conn.execute(query("reembed", "begin"), params)
    sources.create_queue(conn, shadow)
    if not sources.exists(conn, shadow.store_schema, shadow.store_name):
        sources.create_store(conn, shadow, provider.model_id, provider.dimensions)
    queued = sources.enqueue_missing(conn, shadow)
    log.info("re-embedding %s with %s: %d rows queued", source.name, provider.model_id, queued)


def _drain(db: Database, settings: Settings, provider: Provider, shadow: sources.Source) -> int:
    worker = Worker(settings, db, provider, [shadow], backlog_progress(db, [shadow]))
    worker.run(once=True)
    return worker.embedded


def _switch(conn: psycopg.Connection, source: sources.Source, shadow: sources.Source) -> None:
    # Rows edited since the last catch-up go to the live queue: the new model's workers embed them.
    sources.enqueue_stale(conn, shadow.with_queue(source.queue_name))
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
    search.install(conn, source)
    conn.execute(query("reembed", "finish"), {"name": source.name})
