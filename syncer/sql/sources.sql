-- name: find_table
-- The table a source names, resolved like the application would (search_path for bare names).
SELECT c.oid, n.nspname, c.relname, c.relkind::text
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = to_regclass(
    CASE WHEN %(schema)s::text IS NULL THEN quote_ident(%(name)s)
         ELSE quote_ident(%(schema)s) || '.' || quote_ident(%(name)s) END)

-- name: table_columns
-- Columns of a table with their SQL types, in table order.
SELECT attname, format_type(atttypid, atttypmod)
FROM pg_attribute
WHERE attrelid = %(oid)s AND attnum > 0 AND NOT attisdropped
ORDER BY attnum

-- name: primary_key
-- The primary key columns of a table, in key order.
SELECT a.attname
FROM pg_index i
CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = %(oid)s AND i.indisprimary
ORDER BY k.ord

-- name: store_dimensions
-- The dimension of an existing store's embedding column (NULL: no such store).
SELECT a.atttypmod
FROM pg_attribute a
WHERE a.attrelid = to_regclass(quote_ident(%(schema)s) || '.' || quote_ident(%(name)s))
  AND a.attname = 'embedding' AND NOT a.attisdropped

-- name: registered
-- What the registry remembers of a source.
SELECT model, dimensions, backfilled_at, reembed_model FROM syncer.sources WHERE name = %(name)s

-- name: register
-- Record (or refresh) a source in the registry.
INSERT INTO syncer.sources (name, source_table, store_table, model, dimensions, config)
VALUES (%(name)s, %(source_table)s, %(store_table)s, %(model)s, %(dimensions)s, %(config)s)
ON CONFLICT (name) DO UPDATE
SET source_table = excluded.source_table, store_table = excluded.store_table, config = excluded.config,
    model = excluded.model, dimensions = excluded.dimensions

-- name: mark_backfilled
-- The source's existing rows are queued: later runs only follow changes.
UPDATE syncer.sources SET backfilled_at = now() WHERE name = %(name)s

-- name: relation_exists
-- Whether a relation (table or index) exists in a schema.
SELECT to_regclass(quote_ident(%(schema)s) || '.' || quote_ident(%(name)s)) IS NOT NULL

-- name: create_queue
-- The source's queue: one row per changed key, typed like the source's key.
CREATE TABLE {queue} AS SELECT {keys} FROM {table} WITH NO DATA;
ALTER TABLE {queue}
    ADD COLUMN seq bigint NOT NULL DEFAULT nextval('syncer.change_seq'),
    ADD COLUMN queued_at timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN not_before timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN attempts integer NOT NULL DEFAULT 0,
    ADD COLUMN last_error text,
    ADD COLUMN lease_token uuid,
    ADD COLUMN lease_until timestamptz,
    ADD PRIMARY KEY ({keys});
CREATE UNIQUE INDEX ON {queue} (seq);

-- name: create_store
-- The embedding store: the source's key, its vector, and what it was made from.
CREATE TABLE {store} AS SELECT {keys} FROM {table} WITH NO DATA;
ALTER TABLE {store}
    ADD COLUMN embedding vector({dimensions}) NOT NULL,
    ADD COLUMN content_hash bytea NOT NULL,
    ADD COLUMN model text NOT NULL,
    ADD COLUMN embedded_at timestamptz NOT NULL DEFAULT now(),
    ADD PRIMARY KEY ({keys}),
    -- One store, one model: a worker still running another model cannot write here.
    ADD CONSTRAINT syncer_one_model CHECK (model = {model});

-- name: try_lock
-- One worker at a time builds a given index; the others go on.
SELECT pg_try_advisory_xact_lock(hashtext(%(key)s))

-- name: create_index
-- Cosine HNSW index on the store, for the search function.
CREATE INDEX IF NOT EXISTS {index} ON {store} USING hnsw (embedding vector_cosine_ops)

-- name: drop
-- Remove every object of a source (the source table itself is left alone).
DROP TRIGGER IF EXISTS {rows_trigger} ON {table};
DROP TRIGGER IF EXISTS {updates_trigger} ON {table};
DROP TRIGGER IF EXISTS {truncate_trigger} ON {table};
DROP TRIGGER IF EXISTS {notify_trigger} ON {table};
DROP FUNCTION IF EXISTS {capture_fn}();
DROP FUNCTION IF EXISTS {truncate_fn}();
DROP FUNCTION IF EXISTS {search_fn}(vector, integer, jsonb);
DROP TABLE IF EXISTS {queue};
DROP TABLE IF EXISTS {store};

-- name: forget
-- Remove a source from the registry.
DELETE FROM syncer.sources WHERE name = %(name)s
