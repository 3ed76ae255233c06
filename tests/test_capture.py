"""Change capture on the writer's path: what gets logged and queued, and NOTIFY only for a sleeping worker."""

from __future__ import annotations

import uuid

import psycopg
from psycopg import sql

from syncer.fragments import WAKE_LOCK

from helpers import expand, make_settings, queue_depth, sync_once
from providers import HashEmbedder


def queued_keys(conn: psycopg.Connection) -> list[int]:
    expand(conn)
    return [r[0] for r in conn.execute("SELECT id FROM syncer.docs_queue ORDER BY id")]


def test_queue_records_keys_of_relevant_changes(conn: psycopg.Connection, docs: str, db_url: str) -> None:
    settings = make_settings(db_url, {"table": "docs", "columns": ["body"]})
    sync_once(settings, HashEmbedder(settings))

    conn.execute("UPDATE docs SET title = 'not embedded', lang = 'xx'")
    assert queued_keys(conn) == []
    conn.execute("UPDATE docs SET body = 'one' WHERE id = 1")
    conn.execute("UPDATE docs SET body = 'one again' WHERE id = 1")  # repeated edits coalesce
    conn.execute("DELETE FROM docs WHERE id = 2")
    conn.execute("INSERT INTO docs (id, body) VALUES (9, 'nine')")
    conn.execute("UPDATE docs SET id = 30 WHERE id = 3")  # old and new key
    assert queued_keys(conn) == [1, 2, 3, 9, 30]


def logged(conn: psycopg.Connection) -> list[tuple[list[int], int]]:
    return [(sorted(r[0]), r[1]) for r in conn.execute("SELECT id, changed FROM syncer.docs_log ORDER BY seq")]


def test_each_statement_logs_one_row_of_the_keys_it_changed(conn: psycopg.Connection, docs: str, db_url: str) -> None:
    settings = make_settings(db_url, {"table": "docs", "columns": ["title", "body"]})
    sync_once(settings, HashEmbedder(settings))
    conn.execute("INSERT INTO docs (id, body) SELECT i, 'bulk ' || i FROM generate_series(100, 199) i")
    conn.execute("UPDATE docs SET body = body || '!' WHERE id IN (1, 2)")
    conn.execute("UPDATE docs SET body = body WHERE id = 3")  # same text: nothing
    conn.execute("UPDATE docs SET lang = 'xx'")  # no embedded column: nothing
    conn.execute("UPDATE docs SET title = NULL WHERE id = 4 AND title IS NULL")  # NULL to NULL: nothing
    conn.execute("UPDATE docs SET id = 40 WHERE id = 4")  # a key change: the old and the new key
    conn.execute("DELETE FROM docs WHERE id >= 150")
    conn.execute("DELETE FROM docs WHERE id = 12345")  # no row: nothing
    assert logged(conn) == [(list(range(100, 200)), 100), ([1, 2], 2), ([4, 40], 2), (list(range(150, 200)), 50)]
    assert queued_keys(conn) == [1, 2, 4, 40] + list(range(100, 200))
    assert logged(conn) == []


def test_writers_notify_only_while_a_worker_sleeps_armed(conn: psycopg.Connection, docs: str, db_url: str) -> None:
    settings = make_settings(db_url, {"table": "docs", "columns": ["body"]})
    sync_once(settings, HashEmbedder(settings))
    arm = "SELECT pg_try_advisory_lock(%s, 0)"
    with psycopg.connect(db_url, autocommit=True) as worker:
        worker.execute("LISTEN syncer")
        conn.execute("INSERT INTO docs (body) VALUES ('no worker asleep: no NOTIFY')")
        assert list(worker.notifies(timeout=0.3)) == []
        with conn.transaction():  # a writer in flight holds the wake lock shared: no worker arms until it commits
            conn.execute("UPDATE docs SET body = 'in flight' WHERE id = 1")
            assert worker.execute(arm, [WAKE_LOCK]).fetchone()[0] is False
        assert worker.execute(arm, [WAKE_LOCK]).fetchone()[0] is True  # armed: and the change is visible
        assert "in flight" in worker.execute("SELECT string_agg(body, ',') FROM docs").fetchone()[0]
        conn.execute("INSERT INTO docs (body) SELECT 'bulk ' || i FROM generate_series(1, 100) i")
        with conn.transaction():
            conn.execute("UPDATE docs SET body = body || '!' WHERE id <= 3")
            conn.execute("DELETE FROM docs WHERE id = 4")
        conn.execute("UPDATE docs SET lang = 'xx'")  # logs nothing: no NOTIFY
        received = list(worker.notifies(timeout=0.5))
        assert [(n.channel, n.payload) for n in received] == [("syncer", "docs"), ("syncer", "docs")]
    assert queue_depth(conn) == 105  # 100 inserted, 2 inserted before, keys 2, 3 and 4


def test_capture_functions_run_with_a_pinned_search_path(conn: psycopg.Connection, docs: str, db_url: str) -> None:
    settings = make_settings(db_url, {"table": "docs", "columns": ["body"]})
    sync_once(settings, HashEmbedder(settings))
    rows = conn.execute(
        "SELECT proname, prosecdef, proconfig FROM pg_proc WHERE pronamespace = 'syncer'::regnamespace "
        "AND prorettype = 'trigger'::regtype ORDER BY proname"
    ).fetchall()
    functions = ["docs_deletes_v1", "docs_inserts_v1", "docs_mark_v1", "docs_truncate_v1", "docs_updates_v1"]
    assert [r[0] for r in rows] == [*functions, "notify_v1"]
    assert [r[2] for r in rows if r[0] == "docs_updates_v1"] == [
        ["search_path=pg_catalog, pg_temp", "enable_mergejoin=off"]
    ]
    assert all(r[1] and r[2][0] == "search_path=pg_catalog, pg_temp" for r in rows)
    # An application role that may write docs, and nothing of syncer's, still commits.
    role = sql.Identifier(f"app_writer_{uuid.uuid4().hex[:8]}")
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(role))
    try:
        conn.execute(sql.SQL("GRANT INSERT, UPDATE, DELETE, SELECT ON docs TO {}").format(role))
        conn.execute(sql.SQL("GRANT USAGE ON SEQUENCE docs_id_seq TO {}").format(role))
        with conn.transaction():
            conn.execute(sql.SQL("SET LOCAL ROLE {}").format(role))
            conn.execute("INSERT INTO docs (body) VALUES ('written by the application role')")
        assert queue_depth(conn) == 1
    finally:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(role))
        conn.execute(sql.SQL("DROP ROLE {}").format(role))


def test_a_before_update_trigger_that_rewrites_embedded_text_is_caught(
    conn: psycopg.Connection, docs: str, db_url: str
) -> None:
    """An UPDATE naming no embedded column may still change one through the application's own trigger: with
    such a trigger on the table, every UPDATE is compared."""
    conn.execute(
        "CREATE FUNCTION derive_body() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN NEW.body := 'about ' || NEW.title; RETURN NEW; END $$"
    )
    conn.execute("CREATE TRIGGER derive BEFORE UPDATE ON docs FOR EACH ROW EXECUTE FUNCTION derive_body()")
    settings = make_settings(db_url, {"table": "docs", "columns": ["body"]})
    sync_once(settings, HashEmbedder(settings))
    conn.execute("UPDATE docs SET title = 'Soup' WHERE id = 1")  # names title only; body becomes 'about Soup'
    assert queued_keys(conn) == [1]
    assert conn.execute("SELECT count(*) FROM pg_trigger WHERE tgname = 'syncer_docs_mark'").fetchone() == (0,)


def test_apply_replaces_the_one_capture_function_of_0_2(conn: psycopg.Connection, docs: str, db_url: str) -> None:
    settings = make_settings(db_url, {"table": "docs", "columns": ["body"]})
    sync_once(settings, HashEmbedder(settings))
    # what 0.2 installed: one statement-trigger function behind all three triggers
    conn.execute(
        "CREATE FUNCTION syncer.docs_capture_v2() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$"
    )
    for kind, op in (("inserts", "INSERT"), ("deletes", "DELETE")):
        table = "NEW TABLE AS syncer_new" if op == "INSERT" else "OLD TABLE AS syncer_old"
        conn.execute(
            f"CREATE OR REPLACE TRIGGER syncer_docs_{kind} AFTER {op} ON docs REFERENCING {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION syncer.docs_capture_v2()"
        )
    conn.execute("UPDATE syncer.sources SET objects = NULL")
    sync_once(settings, HashEmbedder(settings))
    assert conn.execute("SELECT to_regproc('syncer.docs_capture_v2')").fetchone() == (None,)
    conn.execute("INSERT INTO docs (id, body) VALUES (7, 'seven')")
    conn.execute("DELETE FROM docs WHERE id = 1")
    assert queued_keys(conn) == [1, 7]


def test_apply_replaces_row_capture_of_0_1_in_one_transaction(conn: psycopg.Connection, docs: str, db_url: str) -> None:
    settings = make_settings(db_url, {"table": "docs", "columns": ["body"]})
    sync_once(settings, HashEmbedder(settings))
    # what 0.1 installed: a row trigger function and its triggers, and a NOTIFY per statement
    conn.execute(
        "CREATE FUNCTION syncer.docs_capture_v1() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$"
    )
    conn.execute(
        "CREATE TRIGGER syncer_docs_rows AFTER INSERT OR DELETE ON docs FOR EACH ROW "
        "EXECUTE FUNCTION syncer.docs_capture_v1()"
    )
    conn.execute(
        "CREATE TRIGGER syncer_docs_notify AFTER INSERT ON docs FOR EACH STATEMENT "
        "EXECUTE FUNCTION syncer.notify_v1('docs')"
    )
    conn.execute("UPDATE syncer.sources SET objects = NULL")
    sync_once(settings, HashEmbedder(settings))
    triggers = [r[0] for r in conn.execute("SELECT tgname FROM pg_trigger WHERE tgrelid = 'docs'::regclass ORDER BY 1")]
    assert triggers == [f"syncer_docs_{kind}" for kind in ("deletes", "inserts", "mark", "truncate", "updates")]
    assert conn.execute("SELECT to_regproc('syncer.docs_capture_v1')").fetchone() == (None,)
    conn.execute("INSERT INTO docs (id, body) VALUES (7, 'seven')")
    assert queued_keys(conn) == [7]
