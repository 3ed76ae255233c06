"""The sync loop end to end with the real packaged model: backfill, insert, update, delete, search."""

from __future__ import annotations

import numpy as np
import psycopg
import pytest

from syncer import catalog, queue, report, search
from syncer.database import Database

from helpers import cosine, make_settings, queue_depth, sha256, stored, sync_once

TOMATO = "Tomato soup\n\nSimmer tomatoes with garlic and onion, then blend until smooth."


def test_backfill_embeds_existing_rows_with_the_model(conn: psycopg.Connection, docs: str, db_url: str, minilm) -> None:
    sync_once(make_settings(db_url), minilm)

    vectors = stored(conn)
    assert sorted(vectors) == [1, 2, 3, 4, 5]
    vector, content_hash, model = vectors[1]
    assert model == "sentence-transformers/all-MiniLM-L6-v2"
    assert content_hash == sha256(TOMATO)
    assert cosine(vector, minilm.embed_documents([TOMATO])[0]) > 0.999
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-3)
    assert vectors[5][1] == sha256("Empty")  # a NULL column is skipped, not rendered as "None"
    assert queue_depth(conn) == 0


def test_insert_update_delete_and_emptied_text(conn: psycopg.Connection, docs: str, db_url: str, minilm) -> None:
    settings = make_settings(db_url)
    sync_once(settings, minilm)
    before = stored(conn)

    conn.execute("INSERT INTO docs (title, body) VALUES ('Pasta', 'Boil pasta in salted water.')")
    conn.execute("UPDATE docs SET body = 'Roast tomatoes first for a deeper flavour.' WHERE id = 1")
    conn.execute("UPDATE docs SET title = NULL, body = '   ' WHERE id = 2")  # nothing left to embed
    conn.execute("DELETE FROM docs WHERE id = 3")
    conn.execute("UPDATE docs SET id = 40 WHERE id = 4")  # a key change moves the vector
    sync_once(settings, minilm)

    after = stored(conn)
    assert sorted(after) == [1, 5, 6, 40]
    new_text = "Tomato soup\n\nRoast tomatoes first for a deeper flavour."
    assert after[1][1] == sha256(new_text)
    assert cosine(after[1][0], minilm.embed_documents([new_text])[0]) > 0.999
    assert after[6][1] == sha256("Pasta\n\nBoil pasta in salted water.")
    assert after[40][1] == before[4][1]
    assert queue_depth(conn) == 0


def test_unchanged_text_is_not_re_embedded(conn: psycopg.Connection, docs: str, db_url: str, minilm) -> None:
    settings = make_settings(db_url)
    sync_once(settings, minilm)
    first = dict(conn.execute("SELECT id, embedded_at FROM docs_embeddings").fetchall())

    conn.execute("UPDATE docs SET lang = 'fr'")  # not an embedded column: nothing is queued
    conn.execute("UPDATE docs SET body = body")  # same values: nothing is queued
    assert queue_depth(conn) == 0
    conn.execute("UPDATE docs SET body = '' WHERE id = 5")  # NULL to empty: queued, same text
    conn.execute("UPDATE docs SET body = body || '!' WHERE id = 2")
    conn.execute("INSERT INTO syncer.docs_queue (id) SELECT id FROM docs ON CONFLICT DO NOTHING")
    assert queue_depth(conn) == 5  # every row queued again, as after a restore
    sync_once(settings, minilm)

    second = dict(conn.execute("SELECT id, embedded_at FROM docs_embeddings").fetchall())
    assert [k for k in first if first[k] != second[k]] == [2]
    assert queue_depth(conn) == 0


def test_template_and_composite_key(conn: psycopg.Connection, db_url: str, minilm) -> None:
    conn.execute("CREATE SCHEMA shop")
    conn.execute("CREATE TABLE shop.items (region text, sku int, name text, notes text, PRIMARY KEY (region, sku))")
    conn.execute("INSERT INTO shop.items VALUES ('eu', 1, 'Kettle', 'boils water'), ('us', 1, 'Kettle', NULL)")
    settings = make_settings(
        db_url, {"table": "shop.items", "template": "Product: {name}\nNotes: {notes}", "target": "shop.item_vectors"}
    )
    sync_once(settings, minilm)

    rows = dict(
        ((r[0], r[1]), bytes(r[2]))
        for r in conn.execute("SELECT region, sku, content_hash FROM shop.item_vectors").fetchall()
    )
    assert rows == {
        ("eu", 1): sha256("Product: Kettle\nNotes: boils water"),
        ("us", 1): sha256("Product: Kettle\nNotes:"),
    }
    conn.execute("DELETE FROM shop.items WHERE region = 'eu'")
    sync_once(settings, minilm)
    assert conn.execute("SELECT region FROM shop.item_vectors").fetchall() == [("us",)]


def test_truncate_empties_the_store(conn: psycopg.Connection, docs: str, db_url: str, minilm) -> None:
    sync_once(make_settings(db_url), minilm)
    conn.execute("TRUNCATE docs")
    assert conn.execute("SELECT count(*) FROM docs_embeddings").fetchone() == (0,)
    assert queue_depth(conn) == 0


def test_search_function_ranks_filters_and_uses_the_index(
    conn: psycopg.Connection, docs: str, db_url: str, minilm
) -> None:
    sync_once(make_settings(db_url, index_min_rows=0), minilm)
    query = minilm.embed_query("how do I cook tomato soup?")

    rows = conn.execute("SELECT id, title, similarity FROM syncer.search_docs(%s, 2)", [query]).fetchall()
    assert [r[0] for r in rows] == [1, 2]
    assert rows[0][2] > rows[1][2] > 0

    german = conn.execute('SELECT id FROM syncer.search_docs(%s, 5, \'{"lang": "de"}\')', [query]).fetchall()
    assert german == [(4,)]

    conn.execute("SET enable_seqscan = off")  # a 5-row table would be scanned; ask what the plan can use
    plan = "\n".join(r[0] for r in conn.execute("EXPLAIN SELECT * FROM syncer.search_docs(%s, 3)", [query]))
    assert "syncer_docs_hnsw" in plan, plan


def test_status_and_search_report(conn: psycopg.Connection, docs: str, db_url: str, minilm) -> None:
    settings = make_settings(db_url)
    sync_once(settings, minilm)
    conn.execute("UPDATE docs SET body = 'changed' WHERE id = 1")
    db = Database.from_settings(settings)
    with db.connect() as c:
        source = catalog.resolve(c, settings.sources[0])
        status = report.status(c, source)
        headers, rows = search.top(c, source, minilm.embed_query("compress files"), 1)
    q = status.queue
    assert (status.rows, status.embedded, q.pending, q.failing, q.dead) == (5, 5, 1, 0, 0)
    assert not status.rows_estimated and q.oldest_seconds is not None and q.oldest_seconds >= 0
    assert headers == [
        "id",
        "title",
        "body",
        "lang",
        "similarity",
        "match_chunk",
        "match_start",
        "match_end",
        "match_text",
    ]
    assert rows[0][1] == "Gzip"


def test_reconcile_finds_changes_that_bypassed_the_triggers(
    conn: psycopg.Connection, docs: str, db_url: str, minilm
) -> None:
    settings = make_settings(db_url)
    sync_once(settings, minilm)
    with conn.transaction():
        conn.execute("SET LOCAL session_replication_role = replica")  # as a logical replica applies rows
        conn.execute("UPDATE docs SET body = 'changed behind our back' WHERE id = 2")
        conn.execute("DELETE FROM docs WHERE id = 3")
    assert queue_depth(conn) == 0

    db = Database.from_settings(settings)
    with db.connect() as c:
        assert queue.enqueue(c, catalog.resolve(c, settings.sources[0]), "stale") == 2
        c.commit()
    sync_once(settings, minilm)
    after = stored(conn)
    assert sorted(after) == [1, 2, 4, 5]
    assert after[2][1] == sha256("Bread\n\nchanged behind our back")
