"""Apply once, run with no DDL; DDL gives way to the application; no code of others runs in syncer's sessions."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from syncer import queue, schema
from syncer.database import Database

from helpers import make_settings, queue_depth, stored, sync_once
from providers import HashEmbedder

DOCS = {"table": "docs", "columns": ["body"]}


@pytest.fixture
def ddl_log(conn: psycopg.Connection) -> Iterator[psycopg.Connection]:
    """Every DDL command run from now on, with the session's application_name."""
    conn.execute("CREATE TABLE public.ddl_log (tag text, app text)")
    conn.execute(
        "CREATE FUNCTION public.log_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $$ BEGIN "
        "INSERT INTO public.ddl_log VALUES (tg_tag, current_setting('application_name')); END $$"
    )
    conn.execute("CREATE EVENT TRIGGER log_ddl ON ddl_command_start EXECUTE FUNCTION public.log_ddl()")
    yield conn
    conn.execute("DROP EVENT TRIGGER log_ddl")


def ddl(conn: psycopg.Connection) -> list[tuple[str, str]]:
    return conn.execute("SELECT tag, app FROM public.ddl_log").fetchall()


def test_applying_an_unchanged_configuration_runs_no_ddl(ddl_log: psycopg.Connection, docs: str, db_url: str) -> None:
    settings = make_settings(db_url, DOCS, application_name="syncer-apply")
    sync_once(settings, HashEmbedder())
    assert ("CREATE TRIGGER", "syncer-apply") in ddl(ddl_log)
    ddl_log.execute("DELETE FROM public.ddl_log")
    db = Database.from_settings(settings)
    assert schema.apply(db, settings, HashEmbedder()) == [(schema.resolve_all(db, settings)[0], 0)]
    sync_once(settings, HashEmbedder())  # `syncer run` with SYNCER_APPLY=auto
    assert ddl(ddl_log) == []
    ddl_log.execute("ALTER TABLE docs ADD COLUMN summary text")  # the search function's columns change
    ddl_log.execute("DELETE FROM public.ddl_log")
    schema.verify(db, settings, HashEmbedder())  # the workers need no new objects for that
    schema.apply(db, settings, HashEmbedder())
    assert {tag for tag, _ in ddl(ddl_log)} == {"CREATE FUNCTION", "DROP FUNCTION", "REVOKE", "COMMENT"}


def test_ddl_gives_way_to_a_long_transaction_and_readers_never_wait(
    conn: psycopg.Connection, docs: str, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(db_url, DOCS, lock_timeout=0.2)
    done = threading.Event()
    with psycopg.connect(db_url) as writer, psycopg.connect(db_url) as reader:
        reader.execute("SELECT count(*) FROM docs")  # a long read: holds ACCESS SHARE until it ends
        writer.execute("UPDATE docs SET lang = 'xx' WHERE id = 4")  # a long write: ROW EXCLUSIVE
        thread = threading.Thread(target=lambda: (sync_once(settings, HashEmbedder()), done.set()), daemon=True)
        with caplog.at_level(logging.WARNING):
            thread.start()
            for _ in range(6):  # meanwhile the application reads and writes without waiting behind syncer
                time.sleep(0.1)
                started = time.monotonic()
                with psycopg.connect(db_url, autocommit=True) as app:
                    app.execute("SET lock_timeout = '1s'")
                    app.execute("SELECT count(*) FROM docs")
                    app.execute("UPDATE docs SET lang = 'yy' WHERE id = 3")
                assert time.monotonic() - started < 0.5
            assert not done.is_set()
            assert "docs: public.docs is in use (pid" in caplog.text and "syncer's DDL gave way to it" in caplog.text
        writer.commit()
        thread.join(30)
    assert done.is_set() and sorted(stored(conn)) == [1, 2, 3, 4]


def test_the_backfill_is_queued_in_batches_after_the_ddl_commits(
    conn: psycopg.Connection, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn.execute("CREATE TABLE docs (id int PRIMARY KEY, body text)")
    conn.execute("INSERT INTO docs SELECT i, 'row ' || i FROM generate_series(1, 1000) i")
    monkeypatch.setattr(queue, "BATCH_ROWS", 100)
    settings = make_settings(db_url, DOCS)
    db = Database.from_settings(settings)
    [(_, queued)] = schema.apply(db, settings, HashEmbedder())
    assert queued == 1000
    transactions = conn.execute("SELECT count(DISTINCT xmin::text) FROM syncer.docs_queue").fetchone()[0]
    trigger_txn = conn.execute("SELECT xmin::text FROM pg_trigger WHERE tgname = 'syncer_docs_inserts'").fetchone()[0]
    assert transactions == 10
    assert conn.execute("SELECT count(*) FROM syncer.docs_queue WHERE xmin::text = %s", [trigger_txn]).fetchone() == (
        0,
    )


def test_functions_planted_by_others_never_run_in_syncer_sessions(
    conn: psycopg.Connection, docs: str, db_url: str
) -> None:
    """With public on the search_path, these would outrank pg_catalog's for syncer's calls (exact types)."""
    conn.execute("CREATE TABLE public.ran (what text)")
    planted = ("concat_ws(text, text)", "btrim(text, text)", "sha256(bytea)", "make_interval(secs double precision)")
    for signature in planted:
        name = signature.split("(")[0]
        conn.execute(
            f"CREATE FUNCTION public.{signature} RETURNS text LANGUAGE sql AS "
            f"$$ INSERT INTO public.ran VALUES ('{name}') RETURNING 'x' $$"
        )
    conn.execute(f'ALTER DATABASE "{conn.info.dbname}" SET search_path = public, pg_catalog')
    settings = make_settings(db_url, DOCS)
    sync_once(settings, HashEmbedder())
    conn.execute("UPDATE docs SET body = 'changed' WHERE id = 1")
    sync_once(settings, HashEmbedder())
    assert conn.execute("SELECT * FROM public.ran").fetchall() == []
    assert len(stored(conn)) == 4 and queue_depth(conn) == 0
