"""The search function is safe to call, keeps its grants, and re-embeds keep what the store carries."""

from __future__ import annotations

import psycopg
import pytest

from syncer import reembed, schema
from syncer.database import Database
from syncer.errors import ConfigError

from helpers import as_role, login_role, make_settings, sync_once
from providers import Hash32Embedder, HashEmbedder, hash_vector

DOCS = {"table": "docs", "columns": ["body"]}
BREAD = "Knead flour, water, salt and yeast; let the dough rise, then bake."


def search(conn: psycopg.Connection, text: str = BREAD, dimensions: int = 16) -> list[int]:
    vector = str(hash_vector(text, dimensions).tolist())
    return [r[0] for r in conn.execute("SELECT id FROM syncer.search_docs(%s::public.vector, 2)", [vector])]


def test_any_search_path_and_planted_operators_are_harmless(conn: psycopg.Connection, docs: str, db_url: str) -> None:
    sync_once(make_settings(db_url, DOCS, index_min_rows=0), HashEmbedder())
    conn.execute("CREATE SCHEMA trap")
    conn.execute(
        "CREATE FUNCTION trap.distance(public.vector, public.vector) RETURNS float8 LANGUAGE sql "
        "AS $$ SELECT 1 / 0 $$"  # would fail any query that used it
    )
    conn.execute(
        "CREATE OPERATOR trap.<=> (LEFTARG = public.vector, RIGHTARG = public.vector, FUNCTION = trap.distance)"
    )
    conn.execute("CREATE FUNCTION trap.to_jsonb(anyelement) RETURNS jsonb LANGUAGE sql AS $$ SELECT 1 / 0 $$")
    conn.execute("SET search_path = trap, pg_catalog")  # pgvector's schema is not on it; the traps come first
    assert search(conn)[0] == 2
    rows = conn.execute(
        'SELECT id FROM syncer.search_docs(%s::public.vector, 5, \'{"lang": "de"}\')',
        [str(hash_vector(BREAD, 16).tolist())],
    ).fetchall()
    assert rows == [(4,)]
    conn.execute("SET enable_seqscan = off")  # still inlined: the HNSW index serves the ORDER BY
    vector = str(hash_vector(BREAD, 16).tolist())
    plan = "\n".join(
        r[0] for r in conn.execute("EXPLAIN SELECT * FROM syncer.search_docs(%s::public.vector, 3)", [vector])
    )
    assert "syncer_docs_hnsw" in plan, plan


def test_the_search_function_keeps_its_grants_and_respects_the_callers_rls(
    conn: psycopg.Connection, docs: str, db_url: str
) -> None:
    settings = make_settings(db_url, DOCS)
    sync_once(settings, HashEmbedder())
    db = Database.from_settings(settings)
    with login_role(conn, "GRANT SELECT ON docs TO {role}") as reader:
        assert "GRANT EXECUTE ON FUNCTION" in "\n".join(_grant_reader(db_url, settings, reader))
        conn.execute("ALTER TABLE docs ADD COLUMN summary text")  # the function's result type changes
        schema.apply(db, settings, HashEmbedder())
        conn.execute("ALTER TABLE docs ENABLE ROW LEVEL SECURITY")
        conn.execute("CREATE POLICY english ON docs USING (lang = 'en')")
        with psycopg.connect(as_role(db_url, reader)) as caller:
            assert search(caller)[0] == 2  # kept its EXECUTE; the German row 4 is hidden from this caller
            vector = str(hash_vector("Der Zug nach Berlin fährt um acht Uhr ab.", 16).tolist())
            ids = [r[0] for r in caller.execute("SELECT id FROM syncer.search_docs(%s::public.vector, 9)", [vector])]
            assert 4 not in ids
        with (
            login_role(
                conn, "GRANT USAGE ON SCHEMA syncer TO {role}", "GRANT SELECT ON docs, docs_embeddings TO {role}"
            ) as stranger,
            psycopg.connect(as_role(db_url, stranger)) as caller,
            pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied for function search_docs"),
        ):
            search(caller)  # not granted: PUBLIC may not execute it


def _grant_reader(db_url: str, settings: object, role: str) -> list[str]:
    from syncer import grants

    db = Database(db_url)
    with db.connect() as conn:
        return grants.grant(conn, "reader", role, schema.resolve_all(db, settings))  # type: ignore[arg-type]


def test_reembed_keeps_the_stores_grants_policies_and_comment(conn: psycopg.Connection, docs: str, db_url: str) -> None:
    settings = make_settings(db_url, DOCS)
    sync_once(settings, HashEmbedder())
    db = Database.from_settings(settings)
    [source] = schema.resolve_all(db, settings)
    with login_role(conn) as analyst:
        conn.execute(f"GRANT SELECT ON docs_embeddings TO {analyst}")
        conn.execute(f"GRANT SELECT (id, embedding) ON docs_embeddings TO {analyst} WITH GRANT OPTION")
        conn.execute("ALTER TABLE docs_embeddings ENABLE ROW LEVEL SECURITY")
        conn.execute(f"CREATE POLICY recent ON docs_embeddings FOR SELECT TO {analyst} USING (id < 4)")
        conn.execute("COMMENT ON TABLE docs_embeddings IS 'vectors of docs'")
        before = _carried(conn)
        reembed.reembed(db, settings, Hash32Embedder(), source)
        assert _carried(conn) == before
        with psycopg.connect(as_role(db_url, analyst)) as reader:
            assert sorted(r[0] for r in reader.execute("SELECT id FROM docs_embeddings")) == [1, 2, 3]


def _carried(conn: psycopg.Connection) -> tuple[object, ...]:
    return conn.execute(
        "SELECT c.relacl::text, c.relrowsecurity, obj_description(c.oid, 'pg_class'), "
        "(SELECT array_agg(attacl::text ORDER BY attnum) FROM pg_attribute WHERE attrelid = c.oid AND attnum > 0), "
        "(SELECT array_agg(policyname || ':' || cmd || ':' || qual) FROM pg_policies WHERE tablename = c.relname) "
        "FROM pg_class c WHERE c.oid = 'public.docs_embeddings'::regclass"
    ).fetchone()


def test_reembed_refuses_before_any_work_when_a_view_depends_on_the_store(
    conn: psycopg.Connection, docs: str, db_url: str
) -> None:
    settings = make_settings(db_url, DOCS)
    sync_once(settings, HashEmbedder())
    db = Database.from_settings(settings)
    [source] = schema.resolve_all(db, settings)
    conn.execute("CREATE VIEW recent_vectors AS SELECT id, embedding FROM docs_embeddings")
    provider = Hash32Embedder()
    with pytest.raises(
        ConfigError, match="public.docs_embeddings has view public.recent_vectors, which a re-embed cannot"
    ):
        reembed.reembed(db, settings, provider, source)
    assert provider.calls == []
    state = "SELECT reembed_model, to_regclass('syncer.docs_next') FROM syncer.sources"
    assert conn.execute(state).fetchone() == (None, None)
