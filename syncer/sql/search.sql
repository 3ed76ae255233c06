-- name: create
-- The search function applications call: top-k rows by cosine similarity, optional filter.
DROP FUNCTION IF EXISTS {search_fn}(vector, integer, jsonb);
CREATE FUNCTION {search_fn}(query_embedding vector, match_count integer DEFAULT 10, filter jsonb DEFAULT NULL)
RETURNS TABLE ({returns}, similarity double precision)
LANGUAGE sql STABLE AS $$
    SELECT {t_columns}, 1 - (e.embedding <=> query_embedding) AS similarity
    FROM {store} e JOIN {table} t ON {t_is_e}
    WHERE filter IS NULL OR to_jsonb(t) @> filter
    ORDER BY e.embedding <=> query_embedding
    LIMIT match_count
$$;
COMMENT ON FUNCTION {search_fn}(vector, integer, jsonb) IS
    'Rows of the source most similar to query_embedding (cosine), best first; filter: jsonb the row must contain';

-- name: top
-- Top rows by cosine similarity through the source's search function.
SELECT * FROM {search_fn}(%(embedding)s, %(k)s, %(filter)s)

-- name: drop
-- Remove the source's search function.
DROP FUNCTION IF EXISTS {search_fn}(vector, integer, jsonb)
