"""Ways syncer was broken by a hostile review, each kept broken-proof: wrong vectors, stuck rows, confusing messages."""

from __future__ import annotations

import json
import threading
import time
import uuid

import numpy as np
import psycopg
import pytest
from pydantic import SecretStr

from syncer import catalog, queue, schema
from syncer.database import Database
from syncer.errors import ConfigError
from syncer.leases import Leases
from syncer.providers import load_provider
from syncer.providers.openai_compatible import OpenAIOptions, OpenAIProvider
from syncer.settings import SourceConfig
from syncer.worker import Worker, WorkerOptions

from helpers import make_settings, queue_depth, sha256, stored, sync_once, syncer_env, syncer_process
from openai_server import FakeOpenAI
from providers import BadVectorEmbedder, HashEmbedder, HookedEmbedder, NulErrorEmbedder, PoisonEmbedder

BODY = {"table": "docs", "columns": ["body"]}


def test_reconcile_and_adoption_remove_vectors_of_rows_left_without_text(
    conn: psycopg.Connection, docs: str, db_url: str
) -> None:
    sync_once(make_settings(db_url, {"table": "docs", "columns": ["title", "body"]}), HashEmbedder())
    assert 5 in stored(conn)  # 'Empty' has a title and no body
    env = syncer_env(db_url, json.dumps([BODY]), SYNCER_PROVIDER="tests.providers:HashEmbedder")
    output, _ = (adopt := syncer_process(["apply", "--adopt"], env)).communicate(timeout=60)
    assert adopt.returncode == 0, output
    sync_once(make_settings(db_url, BODY), HashEmbedder())
    assert 5 not in stored(conn)
    with conn.transaction():  # an edit the triggers never saw
        conn.execute("ALTER TABLE docs DISABLE TRIGGER USER")
        conn.execute("UPDATE docs SET body = NULL WHERE id = 4")
        conn.execute("ALTER TABLE docs ENABLE TRIGGER USER")
    output, _ = (backfill := syncer_process(["backfill"], env)).communicate(timeout=60)
    assert "docs: 1 rows queued" in output, output
    sync_once(make_settings(db_url, BODY), HashEmbedder())
    assert sorted(stored(conn)) == [1, 2, 3]


def test_sources_never_share_a_store(conn: psycopg.Connection, docs: str, db_url: str) -> None:
    settings = make_settings(db_url, BODY | {"name": "a"}, {"table": "docs", "columns": ["title"], "name": "b"})
    with pytest.raises(ConfigError, match="sources 'a' and 'b' would share the store public.docs_embeddings"):
        schema.resolve_all(Database(db_url), settings)


def test_a_source_keeps_its_table_and_store(conn: psycopg.Connection, docs: str, db_url: str) -> None:
    sync_once(make_settings(db_url, BODY), HashEmbedder())
    moved = make_settings(db_url, BODY | {"target": "public.docs_vectors"})
    with pytest.raises(ConfigError, match="the configured store public.docs_vectors is not the applied one"):
        schema.apply(Database(db_url), moved, HashEmbedder())


def test_another_document_prompt_is_another_model(conn: psycopg.Connection) -> None:
    with FakeOpenAI() as server:
        options = OpenAIOptions(model="nomic-embed-text", base_url=server.base_url, api_key=SecretStr("k"))
        plain = OpenAIProvider(options)
        prompted = OpenAIProvider(OpenAIOptions(**vars(options) | {"document_prompt": "passage: "}))
        queried = OpenAIProvider(OpenAIOptions(**vars(options) | {"query_prompt": "query: "}))
    assert plain.model_id == queried.model_id == "nomic-embed-text"  # a query prompt changes no stored vector
    assert prompted.model_id.startswith("nomic-embed-text+prompt:")


def test_vectors_too_short_or_long_for_float32_are_the_rows_errors(conn: psycopg.Connection, db_url: str) -> None:
    conn.execute("CREATE TABLE docs (id int PRIMARY KEY, body text)")
    conn.execute("INSERT INTO docs VALUES (1, 'TINY'), (2, 'HUGE'), (3, 'fine')")
    sync_once(make_settings(db_url, BODY), BadVectorEmbedder())
    assert sorted(stored(conn)) == [3]
    errors = dict(conn.execute("SELECT id, last_error FROM syncer.docs_queue").fetchall())
    assert "too short or too long to compare in float32" in errors[1] and "too short or too long" in errors[2]


def test_template_text_is_the_same_in_every_session(conn: psycopg.Connection, db_url: str) -> None:
    conn.execute("CREATE TABLE events (id int PRIMARY KEY, title text, at timestamptz, price numeric)")
    conn.execute("INSERT INTO events VALUES (1, 'launch', '2026-11-30 12:00+00', 1.5)")
    source = {"table": "events", "template": "{title} at {at} for {price}"}
    settings = make_settings(db_url, source)
    sync_once(settings, HashEmbedder())
    assert stored(conn, "events_embeddings")[1][1] == sha256("launch at 2026-11-30 12:00:00+00 for 1.5")
    with psycopg.connect(db_url, options="-c TimeZone=Asia/Tokyo -c DateStyle=German") as tokyo:
        [resolved] = [catalog.resolve(tokyo, SourceConfig(**source))]
        assert queue.enqueue(tokyo, resolved, "stale") == 0  # nothing looks stale from another time zone
    conn.execute("UPDATE events SET price = 1.50")  # equal as numbers, another text: a change
    assert queue_depth(conn, "events") == 1


def test_a_malformed_200_answer_is_the_providers_fault(conn: psycopg.Connection, docs: str, db_url: str) -> None:
    with FakeOpenAI() as server:
        settings = make_settings(
            db_url, BODY, provider="openai", openai_base_url=server.base_url, openai_api_key="k", dimensions=8
        )
        provider = load_provider(settings)
        db = Database(db_url)
        applied = [s for s, _ in schema.apply(db, settings, provider)]
        server.fail_next(200, times=1000, body={"object": "list", "data": None})
        worker = Worker(db, provider, applied, WorkerOptions.from_settings(settings))
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        time.sleep(1.5)
        worker.stop()
        thread.join(10)
    assert conn.execute("SELECT max(attempts) FROM syncer.docs_queue").fetchone() == (0,)


def test_an_error_text_postgres_cannot_store_is_recorded_cleaned(
    conn: psycopg.Connection, docs: str, db_url: str
) -> None:
    conn.execute("UPDATE docs SET body = 'BAD' WHERE id = 2")
    sync_once(make_settings(db_url, BODY), NulErrorEmbedder())
    assert sorted(stored(conn)) == [1, 3, 4]
    error = conn.execute("SELECT last_error FROM syncer.docs_queue WHERE id = 2").fetchone()[0]
    assert error == "ValueError: bad\\0input ?"


def test_a_key_an_application_held_during_the_settle_is_given_back_at_once(
    conn: psycopg.Connection, docs: str, db_url: str
) -> None:
    settings = make_settings(db_url, BODY, lease_seconds=30, poll_interval=0.2)
    sync_once(settings, HashEmbedder())
    app = psycopg.connect(db_url)

    def touch() -> None:  # an application transaction changes row 1 and has not decided yet
        app.execute("UPDATE docs SET body = 'maybe' WHERE id = 1")

    conn.execute("UPDATE docs SET body = 'edited' WHERE id = 1")
    db = Database(db_url)
    [source] = schema.resolve_all(db, settings)
    worker = Worker(db, HookedEmbedder(touch), [source], WorkerOptions.from_settings(settings))
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        time.sleep(1.0)  # the settle skipped the row the application holds
        app.rollback()
        deadline = time.monotonic() + 8  # far less than the 30 s lease
        while stored(conn)[1][1] != sha256("edited"):
            assert time.monotonic() < deadline, "the row waited for its lease"
            time.sleep(0.1)
    finally:
        worker.stop()
        thread.join(10)
        app.close()


def test_a_claim_whose_answer_was_lost_is_given_back_by_its_token(
    conn: psycopg.Connection, docs: str, db_url: str
) -> None:
    settings = make_settings(db_url, BODY)
    provider = HashEmbedder()
    db = Database(db_url)
    [(source, _)] = schema.apply(db, settings, provider)
    leases = Leases(db, 60, 600)
    token = uuid.uuid4()
    leases.expect(source, token)
    with db.connect() as worker_conn:
        queue.claim(worker_conn, source, provider.model_id, 10, 10**6, 60, token, lane="bulk")  # its answer "lost"
    assert conn.execute("SELECT count(*) FROM syncer.docs_queue WHERE lease_token IS NOT NULL").fetchone() == (4,)
    assert leases.give_back() == 4
    assert conn.execute("SELECT count(*) FROM syncer.docs_queue WHERE lease_token IS NOT NULL").fetchone() == (0,)


def test_adopting_a_definition_revives_dead_rows(conn: psycopg.Connection, docs: str, db_url: str) -> None:
    conn.execute("UPDATE docs SET body = 'POISON' WHERE id = 2")
    settings = make_settings(db_url, BODY, max_attempts=1)
    sync_once(settings, PoisonEmbedder())
    assert conn.execute("SELECT dead_at IS NOT NULL FROM syncer.docs_queue WHERE id = 2").fetchone() == (True,)
    new = make_settings(db_url, {"table": "docs", "columns": ["title", "body"]}, max_attempts=1)
    schema.apply(Database(db_url), new, HashEmbedder(), adopt=True)
    assert conn.execute("SELECT attempts, dead_at FROM syncer.docs_queue WHERE id = 2").fetchone() == (0, None)
    sync_once(new, HashEmbedder())
    assert stored(conn)[2][1] == sha256("Bread\n\nPOISON")


def test_a_settle_holds_few_keys_at_a_time(conn: psycopg.Connection, db_url: str) -> None:
    conn.execute("CREATE TABLE docs (id int PRIMARY KEY, body text)")
    conn.execute("INSERT INTO docs SELECT i, 'row ' || i FROM generate_series(1, 200) i")
    sync_once(make_settings(db_url, BODY, batch_size=200), HashEmbedder())
    transactions = conn.execute("SELECT count(DISTINCT xmin::text) FROM docs_embeddings").fetchone()[0]
    assert transactions == -(-200 // queue.SETTLE_ROWS)


def test_errors_prints_keys_retry_takes_back(conn: psycopg.Connection, db_url: str) -> None:
    conn.execute("CREATE TABLE docs (slug text PRIMARY KEY, body text)")
    conn.execute("INSERT INTO docs VALUES ('a  spaced   key', 'POISON'), ('plain', 'fine')")
    source = {"table": "docs", "columns": ["body"]}
    sync_once(make_settings(db_url, source), PoisonEmbedder())
    env = syncer_env(db_url, json.dumps([source]), SYNCER_PROVIDER="tests.providers:HashEmbedder")
    listed, _ = syncer_process(["errors"], env).communicate(timeout=60)
    assert "a  spaced   key" in listed
    retried, _ = syncer_process(["retry", "docs", "a  spaced   key"], env).communicate(timeout=60)
    assert "docs: 1 rows back in line: a  spaced   key" in retried


def test_a_name_too_long_for_postgres_asks_for_a_target(conn: psycopg.Connection, db_url: str) -> None:
    table = "t" * 60
    conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, body text)")
    with psycopg.connect(db_url) as c, pytest.raises(ConfigError, match="longer than PostgreSQL's 63 bytes"):
        catalog.resolve(c, SourceConfig(table=table, columns=("body",), name="long"))


def test_uuid_fills_a_template(conn: psycopg.Connection, db_url: str) -> None:
    conn.execute("CREATE TABLE docs (id int PRIMARY KEY, ref uuid, body text)")
    conn.execute("INSERT INTO docs VALUES (1, '6d1f8a1e-0000-4000-8000-000000000001', 'x')")
    sync_once(make_settings(db_url, {"table": "docs", "template": "{body} ({ref})"}), HashEmbedder())
    assert stored(conn)[1][1] == sha256("x (6d1f8a1e-0000-4000-8000-000000000001)")


def test_a_norm_check_keeps_ordinary_vectors(conn: psycopg.Connection) -> None:
    from syncer.embedding import unusable

    assert unusable(np.eye(3, dtype=np.float32) * 0.5) == [None, None, None]
