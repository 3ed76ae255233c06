-- name: queue_state
-- A source's queue by state (ready, leased, backing off, dead: each row in one; logged changes not yet moved into
-- the queue count as ready), failing rows, the age of the oldest pending change (dead rows excluded) and the
-- latest error: one scan of the queue and of the log, none of the table.
WITH logged AS (SELECT coalesce(sum(changed), 0) AS keys, min(logged_at) AS oldest FROM {log})
SELECT count(*) FILTER (WHERE dead_at IS NULL AND coalesce(lease_until < now(), true) AND not_before <= now())
         + (SELECT keys FROM logged),
       count(*) FILTER (WHERE dead_at IS NULL AND lease_until >= now()),
       count(*) FILTER (WHERE dead_at IS NULL AND coalesce(lease_until < now(), true) AND not_before > now()),
       count(*) FILTER (WHERE dead_at IS NOT NULL),
       count(*) FILTER (WHERE dead_at IS NULL AND attempts > 0),
       extract(epoch FROM now() - least(min(queued_at) FILTER (WHERE dead_at IS NULL),
                                        (SELECT oldest FROM logged)))::float8,
       (SELECT last_error FROM {queue} WHERE attempts > 0 ORDER BY last_failed_at DESC NULLS LAST LIMIT 1)
FROM {queue}

-- name: estimate
-- The planner's row count of a table (of all its partitions): cheap however large the table, NULL if never analyzed.
SELECT sum(c.reltuples) FILTER (WHERE c.reltuples >= 0)::bigint
FROM pg_class c
WHERE (c.oid = %(table)s::regclass AND c.relkind <> 'p')
   OR c.oid IN (SELECT relid FROM pg_partition_tree(%(table)s::regclass) WHERE isleaf)

-- name: count
-- Rows of a table, counted: for tables small enough that counting is cheap.
SELECT count(*) FROM {table}

-- name: count_store
-- Rows with vectors, and vectors (chunks), of a store: for stores small enough that counting is cheap.
SELECT count(*) FILTER (WHERE chunk = 0), count(*) FROM {store}

-- name: queued
-- Rows waiting in a source's queue or log (the size of a progress display); dead rows wait for no one.
SELECT (SELECT count(*) FROM {queue} WHERE dead_at IS NULL) + (SELECT coalesce(sum(changed), 0) FROM {log})
