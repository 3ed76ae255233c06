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

-- name: create_log
-- The source's change log: one row per capturing statement, with the keys it changed as one array per key
-- column (typed like the key) and their count. No index: writers only append; workers take rows in any order and
-- coalesce them into the queue. Arrays out of line and uncompressed: compressing a 40 kB array of keys costs
-- milliseconds on the writer's path.
CREATE TABLE {log} AS SELECT {key_arrays_named} FROM {table} WITH NO DATA;
ALTER TABLE {log}
    ADD COLUMN changed integer NOT NULL,
    ADD COLUMN seq bigint NOT NULL DEFAULT nextval('syncer.change_seq'),
    ADD COLUMN logged_at timestamptz NOT NULL DEFAULT now(),
    {external_keys}

-- name: queue_dead_letters
-- Since 0.2: when a row first and last failed, and when it was given up on (dead: no more retries); whether
-- its vectors must be made again though its text is unchanged (another chunking, say); whether it is bulk work
-- (backfill, reconcile) rather than a change the triggers captured, which comes first; the claims' index; an
-- index of the leased keys by token (a worker gives back a claim whose answer it lost).
ALTER TABLE {queue}
    ADD COLUMN IF NOT EXISTS first_failed_at timestamptz,
    ADD COLUMN IF NOT EXISTS last_failed_at timestamptz,
    ADD COLUMN IF NOT EXISTS dead_at timestamptz,
    ADD COLUMN IF NOT EXISTS refresh boolean NOT NULL DEFAULT false,
    ADD COLUMN IF NOT EXISTS bulk boolean NOT NULL DEFAULT false;
CREATE INDEX IF NOT EXISTS {lane_index} ON {queue} (bulk, seq) WHERE dead_at IS NULL;
CREATE INDEX IF NOT EXISTS {lease_index} ON {queue} (lease_token) WHERE lease_token IS NOT NULL

-- name: queue_columns
-- The columns a table has (an older queue or store lacks the newer ones).
SELECT array_agg(attname::text) FROM pg_attribute WHERE attrelid = %(oid)s AND attnum > 0 AND NOT attisdropped

-- name: create_store
-- The embedding store: the source's key, its vector, and what it was made from.
CREATE TABLE {store} AS SELECT {keys} FROM {table} WITH NO DATA;
ALTER TABLE {store}
    ADD COLUMN embedding {vector}({dimensions}) NOT NULL,
    ADD COLUMN content_hash bytea NOT NULL,
    ADD COLUMN model text NOT NULL,
    ADD COLUMN embedded_at timestamptz NOT NULL DEFAULT now(),
    ADD PRIMARY KEY ({keys}),
    -- One store, one model: a worker still running another model cannot write here.
    ADD CONSTRAINT {model_constraint} CHECK (model = {model});

-- name: store_chunks
-- Since 0.2: a row's vectors are its chunks (offsets in its text; the chunk's own text when the row is split),
-- each with the tsvector hybrid search ranks by, under a GIN index.
ALTER TABLE {store}
    ADD COLUMN IF NOT EXISTS chunk integer NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS chunk_start integer,
    ADD COLUMN IF NOT EXISTS chunk_end integer,
    ADD COLUMN IF NOT EXISTS chunk_text text,
    ADD COLUMN IF NOT EXISTS fts tsvector,
    DROP CONSTRAINT {primary_key},
    ADD PRIMARY KEY ({keys}, chunk);
CREATE INDEX IF NOT EXISTS {fts_index} ON {store} USING gin (fts);
CREATE INDEX IF NOT EXISTS {chunk_index} ON {store} (chunk)

-- name: primary_key
-- The name of a table's primary key constraint.
SELECT conname FROM pg_constraint WHERE conrelid = %(oid)s AND contype = 'p'

-- name: index_function
-- The owner's way for workers to build the store's HNSW index once a large backfill has drained, without
-- owning the store: one builder at a time (the others go on), nothing if it exists; true if built now. The
-- graph is built in memory of its own (memory_kb, or about n * (4d + 400) bytes for n vectors of d dimensions,
-- 64 MB to 8 GB: pgvector slows down sharply once the graph no longer fits) with `workers` parallel workers
-- (default: the server's max_parallel_maintenance_workers), also for a store under the 8 MB below which
-- PostgreSQL plans none unless the store's parallel_workers says so (5,000 vectors of 256 dimensions: 1.0 s with
-- one worker, 1.6 s without); a parallel build whose shared memory runs out (a container's small /dev/shm) is
-- done again without them. `m` and `ef_construction` are the graph's (pgvector's defaults: 16, 64; it checks
-- them). Searches go on meanwhile (CREATE INDEX lets reads be). It replaces 0.x's _index_v1 (no graph options),
-- and whoever could run that one (a worker's role, granted by `syncer grant worker`) can run this one.
CREATE OR REPLACE FUNCTION {index_fn}(
    memory_kb bigint DEFAULT NULL, workers integer DEFAULT NULL, m integer DEFAULT 16, ef_construction integer DEFAULT 64
)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    vectors bigint;
    dimensions integer;
    unset boolean;
    build text := {create_index} || format(' WITH (m = %s, ef_construction = %s)', m, ef_construction);
BEGIN
    IF to_regclass({index_name}) IS NOT NULL OR NOT pg_try_advisory_xact_lock(hashtext({index_name})) THEN
        RETURN false;
    END IF;
    SELECT count(*) INTO vectors FROM {store};
    SELECT a.atttypmod INTO dimensions FROM pg_attribute a
    WHERE a.attrelid = {store_name}::regclass AND a.attname = 'embedding';
    PERFORM set_config('maintenance_work_mem', least(greatest(
        coalesce(memory_kb, (vectors * (4 * dimensions + 400) * 5 / 4 / 1024)::bigint), 65536), 8388608)::text
        || 'kB', true);
    IF workers IS NOT NULL THEN
        PERFORM set_config('max_parallel_maintenance_workers', workers::text, true);
    END IF;
    SELECT NOT EXISTS (SELECT FROM pg_options_to_table(c.reloptions) WHERE option_name = 'parallel_workers')
    INTO unset FROM pg_class c WHERE c.oid = {store_name}::regclass;
    IF unset THEN  -- undone below, in this transaction; a setting of the owner's own is left as it is
        EXECUTE format('ALTER TABLE %s SET (parallel_workers = %s)', {store_name}::regclass,
                       current_setting('max_parallel_maintenance_workers'));
    END IF;
    BEGIN
        EXECUTE build;
    EXCEPTION WHEN disk_full OR out_of_memory THEN
        PERFORM set_config('max_parallel_maintenance_workers', '0', true);
        EXECUTE build;
    END;
    IF unset THEN
        ALTER TABLE {store} RESET (parallel_workers);
    END IF;
    RETURN true;
END
$$;
REVOKE ALL ON FUNCTION {index_fn}(bigint, integer, integer, integer) FROM PUBLIC;
DO $grant$
DECLARE
    grantee regrole;
    grantable boolean;
BEGIN
    FOR grantee, grantable IN
        SELECT a.grantee::regrole, a.is_grantable FROM pg_proc p, aclexplode(p.proacl) a
        WHERE p.oid = to_regprocedure({index_fn_v1_signature}) AND a.privilege_type = 'EXECUTE'
          AND a.grantee NOT IN (0, p.proowner)
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %s%s', {index_fn_signature}, grantee,
                       CASE WHEN grantable THEN ' WITH GRANT OPTION' ELSE '' END);
    END LOOP;
END
$grant$;
DROP FUNCTION IF EXISTS {index_fn_v1}(bigint, integer)

-- name: build_index
-- Build the store's HNSW index through the owner's function.
SELECT {index_fn}(%(memory_kb)s, %(workers)s, %(m)s, %(ef_construction)s)

-- name: index_options
-- The options the store's HNSW index was built with (e.g. m=8 and ef_construction=20; NULL: pgvector's defaults); no
-- row if it has no index.
SELECT c.reloptions FROM pg_class c WHERE c.oid = to_regclass(%(index)s)

-- name: unfinished_rebuild
-- An invalid index that a REINDEX INDEX CONCURRENTLY of the store's HNSW index left behind: the rebuild did not
-- finish, and the index is still the graph it was, whatever options an ALTER INDEX gave it since.
SELECT n.nspname::text, c.relname::text FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE i.indrelid = to_regclass(%(store)s) AND NOT i.indisvalid AND starts_with(c.relname::text, %(prefix)s)
ORDER BY c.relname LIMIT 1

-- name: store_rows
-- The store's vectors, counted up to a cap (a large store is not read through to say it is large).
SELECT count(*) FROM (SELECT FROM {store} LIMIT %(cap)s) AS capped

-- name: drop_index_function
-- Remove a store's index function (a re-embed's shadow store, once switched in).
DROP FUNCTION IF EXISTS {index_fn}(bigint, integer, integer, integer);
DROP FUNCTION IF EXISTS {index_fn_v1}(bigint, integer)

-- name: drop
-- Remove the source's log, queue, store and index function (the source table itself is left alone).
DROP FUNCTION IF EXISTS {index_fn}(bigint, integer, integer, integer);
DROP FUNCTION IF EXISTS {index_fn_v1}(bigint, integer);
DROP TABLE IF EXISTS {log};
DROP TABLE IF EXISTS {queue};
DROP TABLE IF EXISTS {store}
