"""What syncer refuses to serve at start, naming the table or column and the fix, and why."""

from __future__ import annotations

import psycopg
import pytest

from syncer import catalog, queue, schema
from syncer.database import Database
from syncer.errors import ConfigError
from syncer.settings import SourceConfig

from helpers import as_role, login_role, make_settings, sha256, stored, sync_once
from providers import HashEmbedder

WORKER_GRANTS = (
    "GRANT USAGE ON SCHEMA syncer TO {role}",
    "GRANT SELECT ON docs, syncer.sources TO {role}",
    "GRANT SELECT, INSERT, UPDATE, DELETE ON syncer.docs_queue, docs_embeddings TO {role}",
)


def resolve(url: str, **source: object) -> None:
    with psycopg.connect(url) as conn:
        catalog.resolve(conn, SourceConfig(**source))  # type: ignore[arg-type]


def hide_row_2(conn: psycopg.Connection, force: bool = False) -> None:
    conn.execute("ALTER TABLE docs ENABLE ROW LEVEL SECURITY")
    if force:
        conn.execute("ALTER TABLE docs FORCE ROW LEVEL SECURITY")
    conn.execute("CREATE POLICY tenant ON docs USING (id <> 2)")


def test_rows_hidden_by_row_level_security_are_never_taken_for_deleted(
    conn: psycopg.Connection, docs: str, db_url: str
) -> None:
    settings = make_settings(db_url, {"table": "docs", "columns": ["body"]})
    provider = HashEmbedder()
    sync_once(settings, provider)
    with login_role(conn, *WORKER_GRANTS) as worker:
        hide_row_2(conn)
        conn.execute("UPDATE docs SET body = 'edited while hidden from the worker' WHERE id = 2")
        url = as_role(db_url, worker)
        with pytest.raises(ConfigError, match=f"row-level security on public.docs hides rows from role {worker}"):
            schema.resolve_all(Database(url), settings)
        # A worker that started before the policy existed fails loudly instead of unstoring the row.
        [source] = schema.resolve_all(Database(db_url), settings)
        worker_db = Database(url)
        with worker_db.connect() as worker_conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
            queue.claim(worker_conn, source, provider.model_id, 10, 10**6, 60, lane="bulk")
        with worker_db.connect() as worker_conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
            queue.enqueue(worker_conn, source, "stale")  # `syncer backfill`
    assert sorted(stored(conn)) == [1, 2, 3, 4]


@pytest.mark.parametrize("force", [False, True])
def test_row_level_security_is_refused_at_start_with_the_fix(
    conn: psycopg.Connection, docs: str, db_url: str, force: bool
) -> None:
    with login_role(conn, "GRANT SELECT ON docs TO {role}") as reader, login_role(conn) as owner:
        conn.execute(f"ALTER TABLE docs OWNER TO {owner}")
        hide_row_2(conn, force)
        expected = f"ALTER ROLE {reader} BYPASSRLS, or run syncer as the table's owner ({owner})"
        with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")):
            resolve(as_role(db_url, reader), table="docs", columns=["body"])
        if force:
            with pytest.raises(ConfigError, match="after ALTER TABLE public.docs NO FORCE ROW LEVEL SECURITY"):
                resolve(as_role(db_url, owner), table="docs", columns=["body"])
        else:
            resolve(as_role(db_url, owner), table="docs", columns=["body"])  # the owner sees every row
        conn.execute(f"ALTER ROLE {reader} BYPASSRLS")
        resolve(as_role(db_url, reader), table="docs", columns=["body"])
        conn.execute("ALTER TABLE docs OWNER TO CURRENT_USER")


@pytest.mark.parametrize(
    ("ddl", "key", "message"),
    [
        ("ADD COLUMN slug text UNIQUE", ["slug"], "key column 'slug' of public.docs may be NULL: ALTER TABLE"),
        ("ADD COLUMN slug text NOT NULL DEFAULT 'same'", ["slug"], "key (slug) of public.docs is not unique"),
        (
            "ADD COLUMN slug text NOT NULL DEFAULT 'same'",
            ["slug", "lang"],
            "CREATE UNIQUE INDEX ON public.docs (slug, lang)",
        ),
    ],
)
def test_a_key_must_be_not_null_and_unique(
    conn: psycopg.Connection, docs: str, db_url: str, ddl: str, key: list[str], message: str
) -> None:
    conn.execute(f"ALTER TABLE docs {ddl}")
    conn.execute("UPDATE docs SET lang = 'en' WHERE lang IS NULL")
    conn.execute("ALTER TABLE docs ALTER COLUMN lang SET NOT NULL")
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve(db_url, table="docs", columns=["body"], key=key)


def test_keys_covered_by_a_unique_index_are_accepted(conn: psycopg.Connection, docs: str, db_url: str) -> None:
    conn.execute("ALTER TABLE docs ADD COLUMN slug text")
    conn.execute("UPDATE docs SET slug = 'doc-' || id")
    conn.execute("ALTER TABLE docs ALTER COLUMN slug SET NOT NULL")
    conn.execute("CREATE UNIQUE INDEX ON docs (slug)")
    resolve(db_url, table="docs", columns=["body"], key=["slug"])
    conn.execute("ALTER TABLE docs ALTER COLUMN lang SET DEFAULT 'en'")
    conn.execute("UPDATE docs SET lang = 'en' WHERE lang IS NULL")
    conn.execute("ALTER TABLE docs ALTER COLUMN lang SET NOT NULL")
    resolve(db_url, table="docs", columns=["body"], key=["slug", "lang"])  # a superset of a unique key is unique


@pytest.mark.parametrize(
    ("column", "source", "message"),
    [
        ("tags text[]", {"columns": ["tags"]}, "column 'tags' of public.docs is text[]: only text-like values"),
        ("meta jsonb", {"columns": ["meta"]}, "column 'meta' of public.docs is jsonb: only text-like values"),
        ("meta jsonb", {"template": "{meta}"}, "GENERATED ALWAYS AS"),
        ("year int", {"columns": ["year"]}, 'use a template, e.g. "{title} ({year})"'),
        ("mood mood", {"template": "{mood}"}, "would run code of the type's owner as syncer"),
        ("mood mood", {"columns": ["mood"]}, "would run code of the type's owner as syncer"),
    ],
)
def test_embedded_columns_must_be_text_or_built_in(
    conn: psycopg.Connection, docs: str, db_url: str, column: str, source: dict, message: str
) -> None:
    conn.execute("CREATE TYPE mood AS ENUM ('happy', 'sad')")
    conn.execute(f"ALTER TABLE docs ADD COLUMN {column}")
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        resolve(db_url, table="docs", **source)


def test_text_like_columns_domains_and_built_in_template_fields_are_embedded(
    conn: psycopg.Connection, docs: str, db_url: str
) -> None:
    conn.execute("CREATE DOMAIN short_text AS varchar(200)")
    conn.execute("CREATE DOMAIN headline AS short_text CHECK (VALUE <> '')")
    conn.execute("ALTER TABLE docs ADD COLUMN head headline, ADD COLUMN code char(4), ADD COLUMN year int")
    conn.execute("UPDATE docs SET head = 'Head ' || id, code = 'ab', year = 2000 + id")
    settings = make_settings(
        db_url,
        {"table": "docs", "columns": ["head", "code"], "name": "plain"},
        {"table": "docs", "template": "{head} ({year})", "name": "templated", "target": "docs_templated"},
    )
    sync_once(settings, HashEmbedder())
    assert stored(conn, "public.docs_embeddings")[1][1] == sha256("Head 1\n\nab")
    assert stored(conn, "public.docs_templated")[2][1] == sha256("Head 2 (2002)")


def test_citext_is_text_only_from_its_extension(conn: psycopg.Connection, docs: str, db_url: str) -> None:
    conn.execute("CREATE SCHEMA fake")
    conn.execute("CREATE TYPE fake.citext AS ENUM ('a')")  # a type that is only called citext
    conn.execute("ALTER TABLE docs ADD COLUMN fake_tag fake.citext")
    with pytest.raises(ConfigError, match="would run code of the type's owner"):
        resolve(db_url, table="docs", columns=["fake_tag"])
    if conn.execute("SELECT count(*) FROM pg_available_extensions WHERE name = 'citext'").fetchone() == (0,):
        pytest.skip("this PostgreSQL build ships no citext extension (the pgvector image does)")
    conn.execute("CREATE EXTENSION citext")
    conn.execute("ALTER TABLE docs ADD COLUMN tag citext")
    resolve(db_url, table="docs", columns=["tag"])


def test_the_database_must_be_utf8(empty_db_url: str, server_url: str) -> None:
    with psycopg.connect(empty_db_url) as conn:
        catalog.check_database(conn)  # the test server's databases are UTF8
    latin = empty_db_url.replace("syncer_empty_", "syncer_latin_")
    name = psycopg.conninfo.conninfo_to_dict(latin)["dbname"]
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE \"{name}\" ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
    try:
        with psycopg.connect(latin) as conn, pytest.raises(ConfigError, match="encoding is LATIN1"):
            catalog.check_database(conn)
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{name}"')
