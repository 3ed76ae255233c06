"""Partitioned sources: TRUNCATE of one partition clears its vectors; partitions attached later are queued by apply."""

from __future__ import annotations

import psycopg

from helpers import make_settings, queue_depth, sha256, stored, sync_once
from providers import HashEmbedder

EVENTS = {"table": "events", "columns": ["body"]}


def events(conn: psycopg.Connection) -> None:
    conn.execute(
        "CREATE TABLE events (id int, region text, body text, PRIMARY KEY (id, region)) PARTITION BY LIST (region)"
    )
    conn.execute("CREATE TABLE events_eu PARTITION OF events FOR VALUES IN ('eu')")
    conn.execute("CREATE TABLE events_us PARTITION OF events FOR VALUES IN ('us')")
    conn.execute(
        "INSERT INTO events SELECT i, CASE WHEN i % 2 = 0 THEN 'eu' ELSE 'us' END, 'event ' || i "
        "FROM generate_series(1, 10) i"
    )


def keys(conn: psycopg.Connection) -> list[int]:
    return sorted(r[0] for r in conn.execute("SELECT id FROM events_embeddings"))


def test_truncating_one_partition_clears_its_vectors(conn: psycopg.Connection, db_url: str) -> None:
    events(conn)
    settings = make_settings(db_url, EVENTS)
    sync_once(settings, HashEmbedder())
    assert keys(conn) == list(range(1, 11))
    conn.execute("TRUNCATE events_eu")
    assert queue_depth(conn, "events") == 5  # the vectors whose rows are gone, for the worker to remove
    sync_once(settings, HashEmbedder())
    assert keys(conn) == [1, 3, 5, 7, 9]
    conn.execute("TRUNCATE events")
    assert queue_depth(conn, "events") == 0 and keys(conn) == []


def test_a_partition_attached_later_is_installed_and_queued_by_apply(conn: psycopg.Connection, db_url: str) -> None:
    events(conn)
    settings = make_settings(db_url, EVENTS)
    sync_once(settings, HashEmbedder())
    conn.execute("CREATE TABLE events_asia (LIKE events)")
    conn.execute("INSERT INTO events_asia SELECT i, 'asia', 'asian event ' || i FROM generate_series(11, 13) i")
    conn.execute("ALTER TABLE events ATTACH PARTITION events_asia FOR VALUES IN ('asia')")
    assert queue_depth(conn, "events") == 0  # attaching fires no trigger
    sync_once(settings, HashEmbedder())  # `syncer run` (or `syncer apply`) finds the partition
    assert keys(conn) == list(range(1, 14))
    assert {k: v[1] for k, v in stored(conn, "events_embeddings").items() if k > 10} == {
        i: sha256(f"asian event {i}") for i in (11, 12, 13)
    }
    conn.execute("TRUNCATE events_asia")
    sync_once(settings, HashEmbedder())
    assert keys(conn) == list(range(1, 11))


def test_truncating_a_partition_keeps_what_other_transactions_insert(conn: psycopg.Connection, db_url: str) -> None:
    events(conn)
    settings = make_settings(db_url, EVENTS)
    sync_once(settings, HashEmbedder())
    with psycopg.connect(db_url) as app:
        app.execute("DELETE FROM events WHERE region = 'us'")
        app.execute("INSERT INTO events VALUES (99, 'us', 'inserted meanwhile')")  # not committed yet
        conn.execute("TRUNCATE events_eu")  # the table looks empty to this transaction
        app.commit()
    sync_once(settings, HashEmbedder())
    assert keys(conn) == [99]
    assert stored(conn, "events_embeddings")[99][1] == sha256("inserted meanwhile")
