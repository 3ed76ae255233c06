"""Bring a database up to date — syncer's own schema (alembic), then each source's objects — or say what differs.

`syncer apply` (the owner's step) runs ``apply``; so does `syncer run` with SYNCER_APPLY=auto, while
with SYNCER_APPLY=never it only runs ``verify``. An unchanged configuration costs no DDL and no
lock beyond reads either way: the installed objects are compared first (the migration version, a
fingerprint of each source's rendered objects kept in syncer.sources, their presence in the catalog).
DDL that needs a lock on an application's table waits at most SYNCER_LOCK_TIMEOUT for it, then gives
way and retries with backoff, so the application never queues behind syncer; the backfill is queued
after that DDL has committed, in keyset batches that each commit.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from typing import Literal, TypeVar

import psycopg
from psycopg import sql

from . import capture, catalog, queue, registry, search, tables
from .database import Database, transaction
from .errors import ConfigError
from .indexing import HNSW_MAX_DIMENSIONS, Indexing
from .providers import Provider
from .queries import query
from .registry import Registration
from .settings import Settings
from .sources import Source, describe, same_text
from .wakeup import backoff

log = logging.getLogger(__name__)

HEAD = "0004"  # the newest migration (a test keeps it in step with migrations/versions)
APPLY_LOCK = 0x73796E63  # "sync": one applier at a time (transaction-level: works through PgBouncer)
OBJECTS_VERSION = "3"  # part of every fingerprint: a release that renders objects differently re-applies them
LOCK_RETRY_BASE, LOCK_RETRY_CAP = 1.0, 30.0  # seconds between attempts at DDL that gave way to the application

T = TypeVar("T")
Requeue = Literal["stale", "all"] | None  # which rows an apply makes stale: of other text, or every one


def current_revision(conn: psycopg.Connection) -> str | None:
    migrated = conn.execute(query("catalog", "migrated")).fetchone()
    row = conn.execute(query("catalog", "migration")).fetchone() if migrated and migrated[0] else None
    return row[0] if row else None


def migrate(db: Database, revision: str = "head") -> None:
    """Upgrade syncer's own schema (``syncer.*``) to ``revision``; nothing at all if it is there already
    (alembic, slow to import, is loaded only when there is something to do)."""
    if revision == "head":
        with db.connect(vector=False) as conn:
            if current_revision(conn) == HEAD:
                return
    from . import upgrade

    upgrade.upgrade(db, revision, APPLY_LOCK)


def lock_applies(conn: psycopg.Connection) -> None:
    """Serialize this transaction with every other apply, re-embed switch or drop."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", [APPLY_LOCK])


def resolve_all(db: Database, settings: Settings) -> list[Source]:
    """Check every configured source against the live catalog (no changes made)."""
    if not settings.sources:
        raise ConfigError('no sources configured: set SYNCER_SOURCES, e.g. [{"table": "docs", "columns": ["body"]}]')
    with db.connect(vector=False) as conn:
        catalog.check_database(conn)
        return _distinct_stores([catalog.resolve(conn, config) for config in settings.sources])


def _distinct_stores(source_list: list[Source]) -> list[Source]:
    """Two sources never share a store (two sources on one table need a ``target`` each but one)."""
    seen: dict[str, str] = {}
    for source in source_list:
        other = seen.setdefault(source.qualified_store, source.name)
        if other != source.name:
            raise ConfigError(
                f"sources {other!r} and {source.name!r} would share the store {source.qualified_store}: "
                "give one of them its own 'target'"
            )
    return source_list


def verify(db: Database, settings: Settings, provider: Provider) -> list[Source]:
    """SYNCER_APPLY=never: everything must be applied as configured; else a ConfigError naming `syncer apply`."""
    problems: list[str] = []
    with db.connect() as conn:
        revision, head = current_revision(conn), HEAD
        if revision != head:
            raise ConfigError(
                f"syncer's schema is at {revision or 'nothing'}, this syncer needs {head}: the owner must run "
                "`syncer apply` (SYNCER_APPLY=never)"
            )
        source_list = _distinct_stores([catalog.resolve(conn, config) for config in settings.sources])
        for source in source_list:
            registration = registry.read(conn, source.name)
            if registration is None:
                problems.append(f"source {source.name!r} is not applied")
                continue
            check_applied(conn, source, registration, provider, adopt=False, how="the owner must run")
            objects = fingerprint(conn, source, settings.notify)
            if not _up_to_date(conn, source, registration, objects, settings.notify, search_too=False):
                problems.append(f"source {source.name!r}: the installed objects differ from the configuration")
    if problems:
        raise ConfigError("; ".join(problems) + ": the owner must run `syncer apply` (SYNCER_APPLY=never)")
    return source_list


def apply(
    db: Database,
    settings: Settings,
    provider: Provider,
    *,
    adopt: bool = False,
    stopping: threading.Event | None = None,
) -> list[tuple[Source, int]]:
    """Migrate, then create or refresh every source; returns each source with the rows newly queued.

    ``adopt``: a source whose configured text definition differs from the applied one takes the
    new one (rows whose text changes are queued); otherwise such a source is refused.
    """
    migrate(db)
    applied = []
    with db.connect() as conn:
        catalog.check_database(conn)
        # after migrating: pgvector's schema is known now
        for source in _distinct_stores([catalog.resolve(conn, config) for config in settings.sources]):
            queued = apply_source(conn, source, provider, settings, adopt, stopping or threading.Event())
            if queued:
                log.info("%s: %d rows queued", source.name, queued, extra={"source": source.name})
            applied.append((source, queued))
    return applied


def apply_source(
    conn: psycopg.Connection,
    source: Source,
    provider: Provider,
    settings: Settings,
    adopt: bool,
    stopping: threading.Event,
) -> int:
    """Install what differs (nothing, if nothing does), then queue the backfill once; returns rows queued."""
    registration = registry.read(conn, source.name)
    if registration is not None:
        check_applied(conn, source, registration, provider, adopt)
    other = registry.store_taken_by(conn, source)
    if other is not None:
        raise ConfigError(f"source {source.name!r}: its store {source.qualified_store} belongs to source {other!r}")
    objects = fingerprint(conn, source, settings.notify)
    partitions = capture.missing_partitions(conn, source)
    requeue: Requeue = None
    if registration is None or partitions or not _up_to_date(conn, source, registration, objects, settings.notify):
        install = lambda: _install(conn, source, provider, objects, settings)  # noqa: E731
        requeue = _giving_way(conn, source, install, stopping)
    elif not _up_to_date(conn, source, registration, objects, settings.notify, search_too=True):
        _install_search(conn, source, objects)  # the table's columns changed: its search function only
    registration = registry.read(conn, source.name)
    assert registration is not None
    queued = queue.enqueue(conn, source, requeue, revive=True) if requeue else 0
    if not registration.backfilled or partitions:
        queued += queue.enqueue(conn, source, "missing")
        with transaction(conn):
            registry.mark_backfilled(conn, source)
    with transaction(conn):
        _index_now(conn, source, settings, provider.dimensions)
    return queued


def _index_now(conn: psycopg.Connection, source: Source, settings: Settings, dimensions: int) -> None:
    """Build the store's index before its queue is worked when it is due (``Indexing.due``): a small backfill
    then maintains it; else the workers build it once it is. An index of other options than configured, or a
    rebuild that did not finish, is named with the SQL that rebuilds it (a large index is the owner's call)."""
    indexing = Indexing.from_settings(settings)
    if indexing.threshold(dimensions) is None:
        log.warning(
            "%s: pgvector indexes vectors of at most %d dimensions, not %d: searches scan the store",
            source.name,
            HNSW_MAX_DIMENSIONS,
            dimensions,
        )
        return
    built = tables.index_options(conn, source)
    if built is None:
        if indexing.due(conn, source, dimensions):
            indexing.build(conn, source)
        return
    index = tables.qualified_index(source)
    options = f"m = {indexing.m}, ef_construction = {indexing.ef_construction}"
    rebuild = f"ALTER INDEX {index} SET ({options}); REINDEX INDEX CONCURRENTLY {index}"
    if (leftover := tables.unfinished_rebuild(conn, source)) is not None:
        log.warning(
            "%s: a rebuild of index %s did not finish (it left %s, invalid): the index is the graph it was, "
            "whatever options it shows; to rebuild it while searches go on: DROP INDEX CONCURRENTLY %s; %s",
            source.name,
            index,
            leftover,
            leftover,
            rebuild,
        )
    elif built != (indexing.m, indexing.ef_construction):
        log.warning(
            "%s: index %s was built with m = %d, ef_construction = %d, not the configured %s; to rebuild it while "
            "searches go on: %s",
            source.name,
            index,
            *built,
            options,
            rebuild,
        )


def _install(conn: psycopg.Connection, source: Source, provider: Provider, objects: str, settings: Settings) -> Requeue:
    """Create or replace the source's objects in one transaction; returns which rows that makes stale."""
    with transaction(conn):
        lock_applies(conn)
        conn.execute("SELECT set_config('lock_timeout', %s, true)", [f"{int(settings.lock_timeout * 1000)}ms"])
        registry.lock(conn, source)
        tables.create_queue(conn, source)
        upgraded = tables.create_store(conn, source, provider.model_id, provider.dimensions)
        catalog.check_store_security(conn, source)
        capture.install(conn, source, settings.notify)
        tables.install_index_function(conn, source)
        search.install(conn, source)
        registration = registry.record(conn, source, provider.model_id, provider.dimensions)
        applied = registration.definition
        requeue: Requeue = "all" if upgraded else None
        if applied != source.definition:
            registry.adopt(conn, source)
            if applied is not None:  # not a first record: rows embedded under another definition
                log.info("%s: now embeds %s", source.name, describe(source.definition))
                # other text: the rows whose text changed; same text, other chunks or search config: every row
                requeue = "all" if upgraded or same_text(applied, source.definition) else "stale"
        registry.installed(conn, source, objects)
    return requeue


def _install_search(conn: psycopg.Connection, source: Source, objects: str) -> None:
    with transaction(conn):
        lock_applies(conn)
        search.install(conn, source)
        registry.installed(conn, source, objects)


def _giving_way(conn: psycopg.Connection, source: Source, ddl: Callable[[], T], stopping: threading.Event) -> T:
    """Run ``ddl``; while it cannot get its locks within the lock timeout, give way and try again."""
    attempt = 0
    while True:
        try:
            return ddl()
        except psycopg.errors.LockNotAvailable:
            attempt += 1
            delay = backoff(attempt, base=LOCK_RETRY_BASE, cap=LOCK_RETRY_CAP)
            holders = catalog.lock_holders(conn, source)
            log.warning(
                "%s: %s is in use (%s); syncer's DDL gave way to it, retrying in %.1fs",
                source.name,
                source.qualified,
                holders or "by a transaction that has since ended",
                delay,
            )
            if stopping.wait(delay):
                raise ConfigError(
                    f"source {source.name!r}: stopped while waiting for a lock on {source.qualified}"
                ) from None


def fingerprint(conn: psycopg.Connection, source: Source, notify: bool) -> str:
    """``<workers' objects>/<search function>``: digests of the per-source objects as apply renders them now.

    The two halves apart: a column added to the table changes the search function only, which
    the workers do not need (with SYNCER_APPLY=never they run on; the next apply updates it).
    """
    halves = (capture.render(conn, source, notify) + tables.render(source), search.render(source))
    return "/".join(_digest(conn, statements) for statements in halves)


def _digest(conn: psycopg.Connection, statements: list[sql.Composed]) -> str:
    digest = hashlib.sha256(OBJECTS_VERSION.encode())
    for statement in statements:
        digest.update(statement.as_string(conn).encode())
    return digest.hexdigest()


def _up_to_date(
    conn: psycopg.Connection,
    source: Source,
    registration: Registration,
    objects: str,
    notify: bool,
    *,
    search_too: bool = False,
) -> bool:
    """Whether the recorded fingerprint and definition match, and every object is there."""
    recorded = (registration.objects or "").split("/")
    wanted = objects.split("/")
    triggers, functions = capture.signatures(conn, source, notify)
    functions.append(tables.index_function_signature(source))
    if search_too:
        functions += search.signatures(source).values()
    return (
        recorded[: len(wanted) if search_too else 1] == wanted[: len(wanted) if search_too else 1]
        and registration.definition == source.definition
        and catalog.installed(conn, source, triggers, functions)
    )


def check_applied(
    conn: psycopg.Connection,
    source: Source,
    registration: Registration,
    provider: Provider,
    adopt: bool,
    how: str = "run",
) -> None:
    """The store must suit the model, and the text definition be the applied one (or be adopted)."""
    where = f"source {source.name!r}: "
    for what, applied_as, configured in (
        ("table", registration.source_table, source.qualified),
        ("store", registration.store_table, source.qualified_store),
    ):
        if applied_as != configured:
            raise ConfigError(
                f"{where}the configured {what} {configured} is not the applied one ({applied_as}); a source's "
                f"table and store are fixed once applied: `syncer drop {source.name}`, then apply"
            )
    if registration.model != provider.model_id:
        raise ConfigError(
            f"{where}store {source.qualified_store} was built with model {registration.model}, not the configured "
            f"{provider.model_id}; `syncer reembed {source.name}` re-embeds it with {provider.model_id} while search "
            "goes on"
        )
    size = catalog.store_dimensions(conn, source)
    if size is not None and size != provider.dimensions:
        raise ConfigError(
            f"{where}store {source.qualified_store} holds vector({size}) but model {provider.model_id} makes "
            f"{provider.dimensions}-dimensional vectors"
        )
    applied = registration.definition
    if applied is None or applied == source.definition or "chunking" not in applied:
        return  # the same, or recorded before 0.2 (upgraded by this apply, its rows embedded again)
    if applied.get("key") != source.definition["key"]:
        raise ConfigError(
            f"{where}the configured key ({', '.join(source.keys)}) is not the applied one "
            f"({', '.join(applied.get('key', []))}); a store is keyed once: `syncer drop {source.name}`, then apply"
        )
    if not adopt:
        raise ConfigError(
            f"{where}the configured text ({describe(source.definition)}) differs from the applied one "
            f"({describe(applied)}); to adopt it {how} `syncer apply --adopt` (rows whose text changes are "
            "re-embedded; workers still on the old definition stop writing)"
        )


def drop_source(db: Database, source: Source) -> None:
    """Remove everything syncer created for ``source``; the source table and its rows stay."""
    with db.connect() as conn, transaction(conn):
        lock_applies(conn)
        capture.drop(conn, source)
        search.drop(conn, source)
        tables.drop(conn, source)
        registry.forget(conn, source)
