-- name: create
-- The search function applications call: top-k rows by cosine similarity, optional filter. A plain SQL
-- function (PostgreSQL inlines it: the HNSW index serves the ORDER BY), SECURITY INVOKER (the caller's
-- privileges and row-level security apply), every operator and function schema-qualified (the caller's
-- search_path does not matter, and an operator planted in another schema is never used).
CREATE OR REPLACE FUNCTION {search_fn}(
    query_embedding {vector}, match_count integer DEFAULT 10, filter jsonb DEFAULT NULL
)
RETURNS TABLE ({returns}, similarity double precision)
LANGUAGE sql STABLE AS $$
    SELECT {t_columns}, 1::double precision OPERATOR(pg_catalog.-) (e.embedding {cosine_distance} query_embedding)
    FROM {store} e JOIN {table} t ON {t_is_e_qualified}
    WHERE filter IS NULL OR pg_catalog.to_jsonb(t) OPERATOR(pg_catalog.@>) filter
    ORDER BY e.embedding {cosine_distance} query_embedding
    LIMIT match_count
$$;
REVOKE ALL ON FUNCTION {search_fn}({vector}, integer, jsonb) FROM PUBLIC;
COMMENT ON FUNCTION {search_fn}({vector}, integer, jsonb) IS
    'Rows of the source most similar to query_embedding (cosine), best first; filter: jsonb the row must contain'

-- name: grants
-- Who may execute the search function now (kept when it has to be dropped and created anew).
SELECT pg_get_userbyid(a.grantee)
FROM pg_proc p CROSS JOIN LATERAL aclexplode(p.proacl) a
WHERE p.oid = to_regprocedure(%(signature)s) AND a.privilege_type = 'EXECUTE' AND a.grantee <> p.proowner
  AND a.grantee <> 0

-- name: regrant
-- Give a role back its right to execute the search function.
GRANT EXECUTE ON FUNCTION {search_fn}({vector}, integer, jsonb) TO {grantee}

-- name: top
-- Top rows by cosine similarity through the source's search function.
SELECT * FROM {search_fn}(%(embedding)s, %(k)s, %(filter)s)

-- name: drop
-- Remove the source's search function.
DROP FUNCTION IF EXISTS {search_fn}({vector}, integer, jsonb)
