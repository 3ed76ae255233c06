"""Long documents: split into chunks that fit the model, each row found by its best chunk; hybrid search."""

from __future__ import annotations

import json

import psycopg
import pytest

from syncer import report, schema, search
from syncer.database import Database
from syncer.demo import corpus

from helpers import make_settings, queue_depth, sha256, sync_once, syncer_env, syncer_process
from providers import WordEmbedder, hash_vector

PHRASE = "The lighthouse keeper feeds seventeen orange cats every Tuesday at dawn."
CHUNKED = {"table": "docs", "columns": ["body"], "chunking": {"max_tokens": 12, "overlap": 2}}


def chunks(conn: psycopg.Connection, key: int) -> list[tuple[int, int, int, str | None]]:
    query = "SELECT chunk, chunk_start, chunk_end, chunk_text FROM docs_embeddings WHERE id = %s ORDER BY chunk"
    return conn.execute(query, [key]).fetchall()


def test_a_phrase_2000_tokens_into_a_row_finds_that_row(conn: psycopg.Connection, db_url: str, minilm) -> None:
    filler = [text for _, text in corpus(400)]
    before, count = [], 0
    for text in filler:
        if count > 2000:
            break
        before.append(text)
        count = minilm.fit("\n\n".join(before))[1]
    long_text = "\n\n".join([*before, PHRASE, *filler[len(before) : len(before) + 5]])
    conn.execute("CREATE TABLE docs (id int PRIMARY KEY, body text)")
    conn.execute("INSERT INTO docs VALUES (1, %s)", [long_text])
    others = filler[len(before) + 5 : len(before) + 60]
    conn.execute("INSERT INTO docs SELECT 1 + i, b FROM unnest(%s::text[]) WITH ORDINALITY AS t(b, i)", [others])
    settings = make_settings(db_url, {"table": "docs", "columns": ["body"]})  # chunking "auto"
    sync_once(settings, minilm)

    stored = chunks(conn, 1)
    assert len(stored) > 8 and all(minilm.fit(text)[1] <= minilm.max_input_tokens for _, _, _, text in stored)
    assert all(long_text[start:end] == text for _, start, end, text in stored)
    with Database(db_url).connect() as c:
        [source] = schema.resolve_all(Database(db_url), settings)
        headers, rows = search.top(c, source, minilm.embed_query("lighthouse keeper feeding orange cats"), 3)
    best = dict(zip(headers, rows[0], strict=True))
    assert best["id"] == 1 and PHRASE in best["match_text"]
    assert long_text[best["match_start"] : best["match_end"]] == best["match_text"]
    assert len({r[0] for r in rows}) == 3  # each row once


def test_a_rows_chunks_are_replaced_together(conn: psycopg.Connection, db_url: str) -> None:
    conn.execute("CREATE TABLE docs (id int PRIMARY KEY, body text)")
    words = " ".join(f"w{i}." for i in range(40))
    conn.execute("INSERT INTO docs VALUES (1, %s), (2, 'short one')", [words])
    settings = make_settings(db_url, CHUNKED)
    provider = WordEmbedder()
    sync_once(settings, provider)
    assert len(chunks(conn, 1)) >= 4 and chunks(conn, 2) == [(0, 0, 9, None)]
    assert all(words[start:end] == text for _, start, end, text in chunks(conn, 1))

    embedded = len(provider.embedded)
    conn.execute("UPDATE docs SET body = body WHERE id = 1")  # no change: nothing embedded again
    sync_once(settings, provider)
    assert len(provider.embedded) == embedded

    conn.execute("UPDATE docs SET body = 'now a short text' WHERE id = 1")
    sync_once(settings, provider)
    assert chunks(conn, 1) == [(0, 0, 16, None)]
    stored = conn.execute("SELECT content_hash FROM docs_embeddings WHERE id = 1").fetchone()[0]
    assert bytes(stored) == sha256("now a short text")

    conn.execute("UPDATE docs SET body = %s WHERE id = 2", [words])
    conn.execute("DELETE FROM docs WHERE id = 1")
    sync_once(settings, provider)
    assert chunks(conn, 1) == [] and len(chunks(conn, 2)) >= 4

    conn.execute("UPDATE docs SET body = '  ' WHERE id = 2")
    sync_once(settings, provider)
    assert chunks(conn, 2) == [] and queue_depth(conn) == 0


def test_many_chunks_of_one_row_still_give_match_count_rows(conn: psycopg.Connection, db_url: str) -> None:
    conn.execute("CREATE TABLE docs (id int PRIMARY KEY, body text)")
    long_row = " ".join(f"part{i}." for i in range(600))  # about 60 chunks
    conn.execute("INSERT INTO docs VALUES (1, %s)", [long_row])
    conn.execute("INSERT INTO docs SELECT i, 'row ' || i FROM generate_series(2, 6) i")
    settings = make_settings(db_url, CHUNKED, index_min_rows=0)
    sync_once(settings, WordEmbedder())
    [source] = schema.resolve_all(Database(db_url), settings)
    near_row_1 = hash_vector(chunks(conn, 1)[30][3])  # a query nearest to one of row 1's chunks
    with Database(db_url).connect() as c:
        _, rows = search.top(c, source, near_row_1, 4)
        assert [r[0] for r in rows][0] == 1 and len({r[0] for r in rows}) == 4
        c.execute("SET enable_seqscan = off")
        plan = "\n".join(r[0] for r in c.execute("EXPLAIN SELECT * FROM syncer.search_docs(%s, 4)", [near_row_1]))
    assert "syncer_docs_hnsw" in plan, plan


def test_chunked_searches_read_only_the_source_rows_they_rank(conn: psycopg.Connection, db_url: str) -> None:
    """The nearest chunks' rows are read by key: joined, the planner may read the whole source table."""
    conn.execute("CREATE TABLE docs (id int PRIMARY KEY, body text)")
    conn.execute("INSERT INTO docs SELECT i, 'row ' || i FROM generate_series(1, 20000) i")
    provider = WordEmbedder()
    schema.apply(Database(db_url), make_settings(db_url, CHUNKED), provider)  # the HNSW index deferred: fast loading
    conn.execute(
        "INSERT INTO docs_embeddings (id, chunk, embedding, content_hash, model, fts) "
        "SELECT i, c, array_fill(i %% 7 + c, ARRAY[%s])::real[]::vector, '\\x00', %s, to_tsvector('simple', 'row') "
        "FROM generate_series(1, 20000) i, generate_series(0, 2) c",
        [provider.dimensions, provider.model_id],
    )
    conn.execute("ANALYZE docs")
    conn.execute("ANALYZE docs_embeddings")
    query = hash_vector("row 7")
    for call in ("syncer.search_docs(%(q)s, 10)", "syncer.hybrid_search_docs('row', %(q)s, 10)"):
        plan = "\n".join(r[0] for r in conn.execute(f"EXPLAIN SELECT * FROM {call}", {"q": query}))
        assert "Seq Scan on docs t" not in plan and "Index Scan using docs_pkey on docs t" in plan, plan


def test_status_counts_rows_and_reports_chunks(conn: psycopg.Connection, db_url: str) -> None:
    conn.execute("CREATE TABLE docs (id int PRIMARY KEY, body text)")
    conn.execute("INSERT INTO docs VALUES (1, %s), (2, 'short')", [" ".join(f"w{i}." for i in range(40))])
    settings = make_settings(db_url, CHUNKED)
    sync_once(settings, WordEmbedder())
    [source] = schema.resolve_all(Database(db_url), settings)
    with Database(db_url).connect() as c:
        status = report.status(c, source)
    assert status.embedded == 2 and status.vectors is not None and status.vectors > 2


def test_adopting_other_chunking_embeds_every_row_again(conn: psycopg.Connection, db_url: str) -> None:
    conn.execute("CREATE TABLE docs (id int PRIMARY KEY, body text)")
    conn.execute("INSERT INTO docs VALUES (1, %s), (2, 'short')", [" ".join(f"w{i}." for i in range(40))])
    sync_once(make_settings(db_url, CHUNKED), WordEmbedder())
    bigger = CHUNKED | {"chunking": {"max_tokens": 16}}
    env = syncer_env(db_url, json.dumps([bigger]), SYNCER_PROVIDER="tests.providers:WordEmbedder")
    output, _ = (run := syncer_process(["run", "--once"], env)).communicate(timeout=60)
    assert run.returncode == 2 and "chunking" in output and "syncer apply --adopt" in output
    output, _ = (adopt := syncer_process(["apply", "--adopt"], env)).communicate(timeout=60)
    assert adopt.returncode == 0 and "2 rows queued" in output, output
    provider = WordEmbedder()
    sync_once(make_settings(db_url, bigger), provider)
    assert max(len(text.split()) for text in provider.embedded) <= 14


@pytest.mark.parametrize("hybrid", [False, True])
def test_hybrid_search_finds_an_exact_identifier(conn: psycopg.Connection, db_url: str, minilm, hybrid: bool) -> None:
    conn.execute("CREATE TABLE docs (id int PRIMARY KEY, body text)")
    bodies = [  # codes that look alike to the model; the one asked for sits in a text about something else
        "ZX-4417",
        "Error ZX 4417 in the ZX series.",
        "The ZX-4470 and ZX-4472 controllers.",
        "Quarterly report on warehouse staffing, forklift maintenance and the new loading dock schedule; "
        "see ticket ZX-4471 for the roof repair.",
        "ZX-1447 ZX-7441 ZX-4174",
        "XZ-4471",
    ]
    conn.execute("INSERT INTO docs SELECT i, b FROM unnest(%s::text[]) WITH ORDINALITY AS t(b, i)", [bodies])
    settings = make_settings(db_url, {"table": "docs", "columns": ["body"]})
    sync_once(settings, minilm)
    [source] = schema.resolve_all(Database(db_url), settings)
    query = "ZX-4471"
    with Database(db_url).connect() as c:
        _, rows = search.top(c, source, minilm.embed_query(query), 3, text=query if hybrid else None)
    assert (rows[0][0] == 4) is hybrid  # only hybrid search ranks the row with the identifier first


class CountingWords(WordEmbedder):
    """WordEmbedder that records the texts it counts."""

    def __init__(self) -> None:
        super().__init__()
        self.counted: list[str] = []

    def fit(self, text: str) -> tuple[str, int]:
        self.counted.append(text)
        return super().fit(text)


def test_a_text_that_fits_is_counted_once(conn: psycopg.Connection, db_url: str) -> None:
    """The chunker counts a row's text to see that it fits; the embed step trusts that count."""
    conn.execute("CREATE TABLE docs (id int PRIMARY KEY, body text)")
    conn.execute("INSERT INTO docs VALUES (1, 'a short row'), (2, %s)", [" ".join(f"w{i}" for i in range(40))])
    provider = CountingWords()
    sync_once(make_settings(db_url, {"table": "docs", "columns": ["body"]}), provider)
    assert provider.counted.count("a short row") == 1
    assert {t for call in provider.calls for t in call} >= {"a short row"}  # and embedded whole
    assert len(chunks(conn, 2)) > 1  # the long one was split by the same counts
