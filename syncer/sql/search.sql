-- name: create
-- The search function applications call: top-k rows by cosine similarity, optional filter. A plain SQL
-- function (PostgreSQL inlines it: the HNSW index serves the ORDER BY), SECURITY INVOKER (the caller's
-- privileges and row-level security apply), every operator and function schema-qualified (the caller's
-- search_path does not matter, and an operator planted in another schema is never used). A source whose
-- rows are one vector each (chunking "none") is searched as it always was.
CREATE OR REPLACE FUNCTION {search_fn}(
    query_embedding {vector}, match_count integer DEFAULT 10, filter jsonb DEFAULT NULL
)
RETURNS TABLE ({returns}, similarity double precision, match_chunk integer, match_start integer,
               match_end integer, match_text text)
LANGUAGE sql STABLE AS $$
    SELECT {t_columns}, 1::double precision OPERATOR(pg_catalog.-) (e.embedding {cosine_distance} query_embedding),
           e.chunk, e.chunk_start, e.chunk_end, e.chunk_text
    FROM {store} e JOIN {table} t ON {t_is_e_qualified}
    WHERE filter IS NULL OR pg_catalog.to_jsonb(t) OPERATOR(pg_catalog.@>) filter
    ORDER BY e.embedding {cosine_distance} query_embedding
    LIMIT match_count
$$;
REVOKE ALL ON FUNCTION {search_fn}({vector}, integer, jsonb) FROM PUBLIC;
COMMENT ON FUNCTION {search_fn}({vector}, integer, jsonb) IS
    'Rows of the source most similar to query_embedding (cosine), best first; filter: jsonb the row must contain'

-- name: create_chunked
-- The search function of a source whose rows may have several vectors (chunks): each row once, ranked by its
-- best chunk, with that chunk. The HNSW index finds the nearest chunks, then each row keeps its best. To be
-- sure of match_count rows it needs the (match_count - 1) * n + 1 nearest chunks, n the most chunks a row has
-- (chunks_per_row, by default read from the store's chunk index): with hnsw.iterative_scan on, the index
-- keeps scanning for that many (without it, it stops at hnsw.ef_search). Each row kept is then read by its key
-- (OFFSET 0 keeps that subquery apart: joined, the planner cannot tell how few rows the LIMIT leaves and may
-- read the whole source table).
CREATE OR REPLACE FUNCTION {search_fn}(
    query_embedding {vector}, match_count integer DEFAULT 10, filter jsonb DEFAULT NULL,
    chunks_per_row integer DEFAULT NULL
)
RETURNS TABLE ({returns}, similarity double precision, match_chunk integer, match_start integer,
               match_end integer, match_text text)
LANGUAGE sql STABLE AS $$
    WITH near AS (
        SELECT {e_keys}, e.chunk, e.chunk_start, e.chunk_end, e.chunk_text,
               e.embedding {cosine_distance} query_embedding AS distance
        FROM {store} e
        ORDER BY e.embedding {cosine_distance} query_embedding
        LIMIT {enough_chunks}
    ), best AS (
        SELECT DISTINCT ON ({keys}) * FROM near ORDER BY {keys}, distance
    )
    SELECT {t_columns}, 1::double precision OPERATOR(pg_catalog.-) e.distance,
           e.chunk, e.chunk_start, e.chunk_end, e.chunk_text
    FROM best e CROSS JOIN LATERAL (SELECT * FROM {table} t WHERE {t_is_e_qualified} OFFSET 0) t
    WHERE filter IS NULL OR pg_catalog.to_jsonb(t) OPERATOR(pg_catalog.@>) filter
    ORDER BY e.distance
    LIMIT match_count
$$;
REVOKE ALL ON FUNCTION {search_fn}({vector}, integer, jsonb, integer) FROM PUBLIC;
COMMENT ON FUNCTION {search_fn}({vector}, integer, jsonb, integer) IS
    'Rows of the source most similar to query_embedding (cosine) by their best chunk, best first, with that chunk'

-- name: create_hybrid
-- Hybrid search: reciprocal rank fusion of full-text search (the store's tsvectors, its GIN index) and vector
-- search (the HNSW index), each row once, ranked by the sum of weight / (rrf_k + rank) over the two rankings
-- it is in; each ranking looks at match_count * candidates rows (by their best chunk; see the search function
-- for chunks_per_row). The rows are read by key, as in the search function.
CREATE OR REPLACE FUNCTION {hybrid_fn}(
    query_text text, query_embedding {vector}, match_count integer DEFAULT 10, filter jsonb DEFAULT NULL,
    full_text_weight double precision DEFAULT 1, semantic_weight double precision DEFAULT 1,
    rrf_k integer DEFAULT 60, candidates integer DEFAULT 4, chunks_per_row integer DEFAULT NULL
)
RETURNS TABLE ({returns}, rrf_score double precision, similarity double precision, text_rank real,
               match_chunk integer, match_start integer, match_end integer, match_text text)
LANGUAGE sql STABLE AS $$
    WITH near AS (
        SELECT {e_keys}, e.chunk, e.chunk_start, e.chunk_end, e.chunk_text,
               e.embedding {cosine_distance} query_embedding AS distance
        FROM {store} e
        ORDER BY e.embedding {cosine_distance} query_embedding
        LIMIT {enough_candidates}
    ), semantic AS (
        SELECT b.*, pg_catalog.row_number() OVER (ORDER BY b.distance) AS rank
        FROM (SELECT DISTINCT ON ({keys}) * FROM near ORDER BY {keys}, distance) b
    ), matched AS (
        SELECT {e_keys}, e.chunk, e.chunk_start, e.chunk_end, e.chunk_text,
               pg_catalog.ts_rank_cd(e.fts, q.query) AS text_rank
        FROM {store} e, pg_catalog.websearch_to_tsquery({search_config}, query_text) q(query)
        WHERE e.fts OPERATOR(pg_catalog.@@) q.query
        ORDER BY text_rank DESC
        LIMIT {enough_candidates}
    ), full_text AS (
        SELECT b.*, pg_catalog.row_number() OVER (ORDER BY b.text_rank DESC) AS rank
        FROM (SELECT DISTINCT ON ({keys}) * FROM matched ORDER BY {keys}, text_rank DESC) b
    ), fused AS (
        SELECT {s_or_f_keys},
               COALESCE(semantic_weight OPERATOR(pg_catalog./) (rrf_k OPERATOR(pg_catalog.+) s.rank), 0)
               OPERATOR(pg_catalog.+)
               COALESCE(full_text_weight OPERATOR(pg_catalog./) (rrf_k OPERATOR(pg_catalog.+) f.rank), 0)
                   AS rrf_score,
               1::double precision OPERATOR(pg_catalog.-) s.distance AS similarity, f.text_rank,
               COALESCE(s.chunk, f.chunk) AS chunk,
               COALESCE(s.chunk_start, f.chunk_start) AS chunk_start,
               COALESCE(s.chunk_end, f.chunk_end) AS chunk_end,
               COALESCE(s.chunk_text, f.chunk_text) AS chunk_text
        FROM semantic s FULL JOIN full_text f ON {s_is_f_qualified}
    )
    SELECT {t_columns}, e.rrf_score, e.similarity, e.text_rank, e.chunk, e.chunk_start, e.chunk_end, e.chunk_text
    FROM fused e CROSS JOIN LATERAL (SELECT * FROM {table} t WHERE {t_is_e_qualified} OFFSET 0) t
    WHERE filter IS NULL OR pg_catalog.to_jsonb(t) OPERATOR(pg_catalog.@>) filter
    ORDER BY e.rrf_score DESC
    LIMIT match_count
$$;
REVOKE ALL ON FUNCTION {hybrid_fn}(text, {vector}, integer, jsonb, double precision, double precision, integer,
                                   integer, integer) FROM PUBLIC;
COMMENT ON FUNCTION {hybrid_fn}(text, {vector}, integer, jsonb, double precision, double precision, integer, integer,
                                integer) IS
    'Rows of the source by reciprocal rank fusion of full-text search (query_text) and vector search (query_embedding)'

-- name: grants
-- Who may execute a function now (kept when it has to be dropped and created anew).
SELECT pg_get_userbyid(a.grantee)
FROM pg_proc p CROSS JOIN LATERAL aclexplode(p.proacl) a
WHERE p.oid = to_regprocedure(%(signature)s) AND a.privilege_type = 'EXECUTE' AND a.grantee <> p.proowner
  AND a.grantee <> 0

-- name: regrant
-- Give a role back its right to execute a function.
GRANT EXECUTE ON FUNCTION {function} TO {grantee}

-- name: top
-- Top rows by cosine similarity through the source's search function.
SELECT * FROM {search_fn}(%(embedding)s, %(k)s, %(filter)s)

-- name: top_hybrid
-- Top rows by hybrid search through the source's hybrid search function.
SELECT * FROM {hybrid_fn}(%(text)s, %(embedding)s, %(k)s, %(filter)s)

-- name: drop
-- Remove a function (the source's search functions).
DROP FUNCTION IF EXISTS {function}
