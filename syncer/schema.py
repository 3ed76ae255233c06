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

from . import capture, search, sources
from .database import Database
from .providers import Provider
from .settings import ConfigError, Settings

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


def resolve_all(db: Database, settings: Settings) -> list[sources.Source]:
    """Check every configured source against the live catalog (no changes made)."""
    if not settings.sources:
        raise ConfigError('no sources configured: set SYNCER_SOURCES, e.g. [{"table": "docs", "columns": ["body"]}]')
    with db.connect(vector=False) as conn:
        return [sources.resolve(conn, config) for config in settings.sources]


def apply(db: Database, settings: Settings, provider: Provider) -> list[tuple[sources.Source, int]]:
    """Migrate, then create or refresh every source; returns each source with the rows its backfill queued."""
    applied = []
    with apply_lock(db):
        migrate(db)
        with db.connect() as conn:
            for config in settings.sources:
                source = sources.resolve(conn, config)
                queued = apply_source(conn, source, provider, settings)
                conn.commit()
                if queued:
                    log.info("backfill of %s: %d rows queued", source.name, queued)
                applied.append((source, queued))
    return applied


def apply_source(conn: psycopg.Connection, source: sources.Source, provider: Provider, settings: Settings) -> int:
    """Create or refresh one source's objects and queue its backfill once; returns rows newly queued."""
    sources.create_tables(conn, source, provider.model_id, provider.dimensions)
    capture.install(conn, source, settings.notify)
    search.install(conn, source)
    queued = 0
    if sources.register(conn, source, provider.model_id, provider.dimensions):
        queued = sources.enqueue_missing(conn, source)
        sources.mark_backfilled(conn, source)
    if queued <= settings.index_after_rows:
        sources.ensure_index(conn, source)  # else built once the backfill has drained: 6x faster
    return queued


def drop_source(db: Database, source: sources.Source) -> None:
    """Remove everything syncer created for ``source``; the source table and its rows stay."""
    with apply_lock(db), db.connect() as conn:
        sources.drop(conn, source, capture.objects(source))
        conn.commit()
