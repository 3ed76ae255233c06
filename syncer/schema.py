"""Bring a database up to date: syncer's own schema (alembic), then each source's objects."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from . import capture, catalog, queue, registry, search, tables
from .database import Database
from .errors import ConfigError
from .providers import Provider
from .registry import Registration
from .settings import Settings
from .sources import Source, describe

log = logging.getLogger(__name__)

APPLY_LOCK = 0x73796E63  # "sync": serializes `apply` among workers starting together


def migrations_dir() -> Path:
    """Installed wheels carry migrations inside the package; a checkout has them at the top."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "migrations", here.parent / "migrations"):
        if (candidate / "env.py").exists():
            return candidate
    raise RuntimeError("syncer's migrations directory is missing from this installation")


def alembic_config(db: Database) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.attributes["engine"] = create_engine(
        "postgresql+psycopg://", creator=lambda: psycopg.connect(db.url), poolclass=NullPool
    )
    return config


def migrate(db: Database, revision: str = "head") -> None:
    """Upgrade syncer's own schema (``syncer.*``) to ``revision``."""
    config = alembic_config(db)
    with config.attributes["engine"].begin() as conn:
        conn.exec_driver_sql("CREATE SCHEMA IF NOT EXISTS syncer")
        config.attributes["connection"] = conn
        command.upgrade(config, revision)


def downgrade(db: Database, revision: str) -> None:
    config = alembic_config(db)
    with config.attributes["engine"].begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, revision)


@contextmanager
def apply_lock(db: Database) -> Iterator[None]:
    with db.connect(autocommit=True, vector=False) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", [APPLY_LOCK])
        try:
            yield
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", [APPLY_LOCK])


def resolve_all(db: Database, settings: Settings) -> list[Source]:
    """Check every configured source against the live catalog (no changes made)."""
    if not settings.sources:
        raise ConfigError('no sources configured: set SYNCER_SOURCES, e.g. [{"table": "docs", "columns": ["body"]}]')
    with db.connect(vector=False) as conn:
        catalog.check_database(conn)
        return [catalog.resolve(conn, config) for config in settings.sources]


def apply(db: Database, settings: Settings, provider: Provider, *, adopt: bool = False) -> list[tuple[Source, int]]:
    """Migrate, then create or refresh every source; returns each source with the rows newly queued.

    ``adopt``: a source whose configured text definition differs from the applied one takes the
    new one (rows whose text changes are queued); otherwise such a source is refused.
    """
    applied = []
    with apply_lock(db):
        migrate(db)
        with db.connect() as conn:
            catalog.check_database(conn)
            for config in settings.sources:
                source = catalog.resolve(conn, config)
                queued = apply_source(conn, source, provider, settings, adopt)
                conn.commit()
                if queued:
                    log.info("%s: %d rows queued", source.name, queued)
                applied.append((source, queued))
    return applied


def apply_source(
    conn: psycopg.Connection, source: Source, provider: Provider, settings: Settings, adopt: bool = False
) -> int:
    """Create or refresh one source's objects and queue its backfill once; returns rows newly queued."""
    registration = registry.read(conn, source.name)
    if registration is not None:
        check_applied(conn, source, registration, provider, adopt)
    tables.create_queue(conn, source)
    if not catalog.exists(conn, source.store_schema, source.store_name):
        tables.create_store(conn, source, provider.model_id, provider.dimensions)
    catalog.check_store_security(conn, source)
    new_partitions = capture.install(conn, source, settings.notify)
    search.install(conn, source)
    registration = registry.record(conn, source, provider.model_id, provider.dimensions)
    queued = 0
    if registration.definition != source.definition:  # adopting (checked above), or recorded before 0.2
        registry.adopt(conn, source)
        if registration.definition is not None:
            queued += queue.enqueue_stale(conn, source)
            log.info("%s: now embeds %s", source.name, describe(source.definition))
    if not registration.backfilled or new_partitions:
        queued += queue.enqueue_missing(conn, source)
        registry.mark_backfilled(conn, source)
    if queue.pending(conn, source, settings.index_after_rows + 1) <= settings.index_after_rows:
        tables.ensure_index(conn, source)  # else built by the workers once the backlog has drained: 6x faster
    return queued


def check_applied(
    conn: psycopg.Connection, source: Source, registration: Registration, provider: Provider, adopt: bool
) -> None:
    """The store must suit the model, and the text definition be the applied one (or be adopted)."""
    where = f"source {source.name!r}: "
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
    if applied is None or applied == source.definition:
        return
    if applied.get("key") != source.definition["key"]:
        raise ConfigError(
            f"{where}the configured key ({', '.join(source.keys)}) is not the applied one "
            f"({', '.join(applied.get('key', []))}); a store is keyed once: `syncer drop {source.name}`, then apply"
        )
    if not adopt:
        raise ConfigError(
            f"{where}the configured text ({describe(source.definition)}) differs from the applied one "
            f"({describe(applied)}); to adopt it run `syncer apply --adopt` (rows whose text changes are "
            "re-embedded; workers still on the old definition stop writing)"
        )


def drop_source(db: Database, source: Source) -> None:
    """Remove everything syncer created for ``source``; the source table and its rows stay."""
    with apply_lock(db), db.connect() as conn:
        capture.drop(conn, source)
        search.drop(conn, source)
        tables.drop(conn, source)
        registry.forget(conn, source)
        conn.commit()
