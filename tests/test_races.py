"""Guarantees that races try to break: edits during embedding, lost leases, rejected rows."""

from __future__ import annotations

import time

import numpy as np
import psycopg

from syncer import queue, schema
from syncer.database import Database

from helpers import make_settings, queue_depth, sha256, stored, sync_once, whole
from providers import HashEmbedder, HookedEmbedder, PoisonEmbedder, hash_vector


def test_edit_committed_while_old_text_is_embedded(conn: psycopg.Connection, docs: str, db_url: str) -> None:
    settings = make_settings(db_url, {"table": "docs", "columns": ["body"]})
    final = "Brown the onions slowly before adding the tomatoes."
    provider = HookedEmbedder(lambda: conn.execute("UPDATE docs SET body = %s WHERE id = 1", [final]))

    sync_once(settings, provider)

    vector, content_hash, _ = stored(conn)[1]
    assert content_hash == sha256(final)
    np.testing.assert_allclose(vector, hash_vector(final), rtol=1e-6)
    assert provider.embedded.count(final) == 1  # the stale vector was dropped, the new text embedded
    assert queue_depth(conn) == 0


def test_edit_in_flight_while_batch_is_written(conn: psycopg.Connection, docs: str, db_url: str) -> None:
    """An application transaction holds the row while the worker writes: the worker neither waits for it nor
    writes its uncommitted text; its commit queues the row again."""
    settings = make_settings(db_url, {"table": "docs", "columns": ["body"]})
    final = "A slow edit."
    committed = conn.execute("SELECT body FROM docs WHERE id = 1").fetchone()[0]
    with psycopg.connect(db_url) as app:
        provider = HookedEmbedder(lambda: app.execute("UPDATE docs SET body = %s WHERE id = 1", [final]))
        sync_once(settings, provider)  # must not wait for the application's open transaction
        assert sorted(stored(conn)) == [1, 2, 3, 4]
        assert stored(conn)[1][1] == sha256(committed)  # the text as committed, not the edit in flight
        app.commit()
    sync_once(settings, provider)
    assert stored(conn)[1][1] == sha256(final)
    assert queue_depth(conn) == 0


def test_worker_that_lost_its_lease_writes_nothing(conn: psycopg.Connection, docs: str, db_url: str) -> None:
    settings = make_settings(db_url, {"table": "docs", "columns": ["body"]})
    provider = HashEmbedder(settings)
    db = Database.from_settings(settings)
    [(source, _)] = schema.apply(db, settings, provider)

    with db.connect() as zombie_conn:
        zombie = queue.claim(
            zombie_conn, source, provider.model_id, limit=10, max_bytes=10**6, lease_seconds=0.2, lane="bulk"
        )
        assert len(zombie) == 4
        time.sleep(0.3)  # the lease expires while the zombie "embeds"
        sync_once(settings, provider)  # another worker takes the keys over
        good = stored(conn)
        bogus = {c.seq: whole(c.text, -hash_vector(c.text)) for c in zombie.embed}
        outcome = queue.settle(zombie_conn, zombie, provider.model_id, bogus, {}, queue.Failures(1.0, 1.0, 10))

    assert (outcome.stored, outcome.released) == (0, 0)
    after = stored(conn)
    assert all(np.array_equal(after[k][0], good[k][0]) for k in good)


def test_rejected_row_is_recorded_and_retried_while_others_flow(
    conn: psycopg.Connection, docs: str, db_url: str
) -> None:
    settings = make_settings(db_url, {"table": "docs", "columns": ["body"]}, retry_base_seconds=2, retry_max_seconds=2)
    conn.execute("UPDATE docs SET body = 'POISON pill' WHERE id = 2")
    provider = PoisonEmbedder(settings)

    sync_once(settings, provider)
    assert sorted(stored(conn)) == [1, 3, 4]
    attempts, error, wait = conn.execute(
        "SELECT attempts, last_error, not_before > now() FROM syncer.docs_queue WHERE id = 2"
    ).fetchone()
    assert (attempts, wait) == (1, True)
    assert "POISON" in error

    sync_once(settings, provider)  # backing off: not claimed again at once
    assert conn.execute("SELECT attempts FROM syncer.docs_queue WHERE id = 2").fetchone() == (1,)
    time.sleep(2)  # backoff of a first failure: 1-2 s
    sync_once(settings, provider)
    assert conn.execute("SELECT attempts FROM syncer.docs_queue WHERE id = 2").fetchone() == (2,)

    conn.execute("UPDATE docs SET body = 'fixed' WHERE id = 2")  # an edit resets the backoff
    sync_once(settings, provider)
    assert stored(conn)[2][1] == sha256("fixed")
    assert queue_depth(conn) == 0


def test_bisection_stores_every_good_row_of_a_batch(conn: psycopg.Connection, db_url: str) -> None:
    conn.execute("CREATE TABLE docs (id int PRIMARY KEY, body text)")
    conn.execute(
        "INSERT INTO docs SELECT i, CASE WHEN i IN (7, 19) THEN 'POISON ' ELSE 'row ' END || i "
        "FROM generate_series(1, 32) i"
    )
    settings = make_settings(db_url, {"table": "docs", "columns": ["body"]})
    sync_once(settings, PoisonEmbedder(settings))
    assert len(stored(conn)) == 30
    failed = conn.execute("SELECT id FROM syncer.docs_queue WHERE attempts = 1 ORDER BY id").fetchall()
    assert failed == [(7,), (19,)]


def test_writer_commits_while_syncer_is_down(conn: psycopg.Connection, docs: str, db_url: str) -> None:
    """Capture is a plain insert in the writer's transaction: no worker needs to be running."""
    settings = make_settings(db_url, {"table": "docs", "columns": ["body"]})
    provider = HashEmbedder(settings)
    sync_once(settings, provider)
    with psycopg.connect(db_url) as app:
        app.execute("INSERT INTO docs (body) SELECT 'bulk ' || i FROM generate_series(1, 500) i")
        app.execute("UPDATE docs SET body = body || '.' WHERE id <= 100")
        app.commit()
    assert queue_depth(conn) == 500 + 4
    sync_once(settings, provider)
    assert len(stored(conn)) == 504


def test_source_objects_are_removed_cleanly(conn: psycopg.Connection, docs: str, db_url: str) -> None:
    settings = make_settings(db_url, {"table": "docs", "columns": ["body"]})
    sync_once(settings, HashEmbedder(settings))
    db = Database.from_settings(settings)
    [source] = schema.resolve_all(db, settings)
    schema.drop_source(db, source)
    leftovers = conn.execute(
        "SELECT to_regclass('public.docs_embeddings'), to_regclass('syncer.docs_queue'), "
        "(SELECT count(*) FROM pg_trigger WHERE tgrelid = 'public.docs'::regclass AND NOT tgisinternal), "
        "(SELECT count(*) FROM syncer.sources)"
    ).fetchone()
    assert leftovers == (None, None, 0, 0)
    conn.execute("UPDATE docs SET body = 'still writable'")
