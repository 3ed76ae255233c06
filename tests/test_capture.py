"""Change capture on the writer's path: what gets queued, and one NOTIFY per statement."""

from __future__ import annotations

import uuid

import psycopg
from psycopg import sql

from helpers import make_settings, queue_depth, sync_once
from providers import HashEmbedder


def queued_keys(conn: psycopg.Connection) -> list[int]:
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


def test_one_notification_per_statement(conn: psycopg.Connection, docs: str, db_url: str) -> None:
    settings = make_settings(db_url, {"table": "docs", "columns": ["body"]})
    sync_once(settings, HashEmbedder(settings))
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute("LISTEN syncer")
        conn.execute("INSERT INTO docs (body) SELECT 'bulk ' || i FROM generate_series(1, 100) i")
        with conn.transaction():
            conn.execute("UPDATE docs SET body = body || '!' WHERE id <= 3")
            conn.execute("DELETE FROM docs WHERE id = 4")
        received = list(listener.notifies(timeout=1.0))
    assert [(n.channel, n.payload) for n in received] == [("syncer", "docs"), ("syncer", "docs")]
    assert queue_depth(conn) == 104


def test_capture_functions_run_with_a_pinned_search_path(conn: psycopg.Connection, docs: str, db_url: str) -> None:
    settings = make_settings(db_url, {"table": "docs", "columns": ["body"]})
    sync_once(settings, HashEmbedder(settings))
    rows = conn.execute(
        "SELECT proname, prosecdef, proconfig FROM pg_proc WHERE pronamespace = 'syncer'::regnamespace "
        "AND prorettype = 'trigger'::regtype ORDER BY proname"
    ).fetchall()
    assert [r[0] for r in rows] == ["docs_capture_v1", "docs_truncate_v1", "notify_v1"]
    assert all(r[1] and r[2] == ["search_path=pg_catalog, pg_temp"] for r in rows)
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
