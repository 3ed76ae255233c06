"""syncer's own schema, by alembic: migrations in ``migrations/``, one ordered, recorded history."""

from __future__ import annotations

from pathlib import Path

import psycopg
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from .database import Database


def migrations_dir() -> Path:
    """Installed wheels carry migrations inside the package; a checkout has them at the top."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "migrations", here.parent / "migrations"):
        if (candidate / "env.py").exists():
            return candidate
    raise RuntimeError("syncer's migrations directory is missing from this installation")


def config(db: Database | None = None) -> Config:
    settings = Config()
    settings.set_main_option("script_location", str(migrations_dir()))
    if db is not None:
        settings.attributes["engine"] = create_engine(
            "postgresql+psycopg://", creator=lambda: psycopg.connect(db.url, prepare_threshold=None), poolclass=NullPool
        )
    return settings


def head() -> str | None:
    return ScriptDirectory.from_config(config()).get_current_head()


def upgrade(db: Database, revision: str, lock: int) -> None:
    """Upgrade to ``revision``, one applier at a time (the transaction-level advisory lock ``lock``)."""
    settings = config(db)
    with settings.attributes["engine"].begin() as conn:
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({lock})")
        conn.exec_driver_sql("CREATE SCHEMA IF NOT EXISTS syncer")
        settings.attributes["connection"] = conn
        command.upgrade(settings, revision)


def downgrade(db: Database, revision: str) -> None:
    settings = config(db)
    with settings.attributes["engine"].begin() as conn:
        settings.attributes["connection"] = conn
        command.downgrade(settings, revision)
