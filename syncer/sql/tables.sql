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

-- name: queue_dead_letters
-- Since 0.2: when a row first and last failed, and when it was given up on (dead: no more retries).
ALTER TABLE {queue}
    ADD COLUMN IF NOT EXISTS first_failed_at timestamptz,
    ADD COLUMN IF NOT EXISTS last_failed_at timestamptz,
    ADD COLUMN IF NOT EXISTS dead_at timestamptz

-- name: queue_columns
-- The columns a queue has (an older queue lacks the newer ones).
SELECT array_agg(attname::text) FROM pg_attribute WHERE attrelid = %(oid)s AND attnum > 0 AND NOT attisdropped

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
    ADD CONSTRAINT {model_constraint} CHECK (model = {model});

-- name: try_lock
-- One worker at a time builds a given index; the others go on.
SELECT pg_try_advisory_xact_lock(hashtext(%(key)s))

-- name: create_index
-- Cosine HNSW index on the store, for the search function.
CREATE INDEX IF NOT EXISTS {index} ON {store} USING hnsw (embedding vector_cosine_ops)

-- name: drop
-- Remove the source's queue and store (the source table itself is left alone).
DROP TABLE IF EXISTS {queue};
DROP TABLE IF EXISTS {store}
