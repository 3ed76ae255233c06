-- name: capture
-- Row triggers: record the changed key (and the old key of a deleted or re-keyed row); a new change of a
-- failing or dead key starts it afresh. CREATE OR REPLACE TRIGGER takes SHARE ROW EXCLUSIVE on the table
-- (readers never wait for it, nor it for them), where DROP TRIGGER would take ACCESS EXCLUSIVE.
CREATE OR REPLACE FUNCTION {capture_fn}() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_OP = 'DELETE' OR (TG_OP = 'UPDATE' AND ROW({old_keys}) IS DISTINCT FROM ROW({new_keys})) THEN
        INSERT INTO {queue} AS q ({keys}) VALUES ({old_keys})
        ON CONFLICT ({keys}) DO UPDATE
        SET seq = excluded.seq, not_before = now(), attempts = 0, last_error = NULL,
            first_failed_at = NULL, last_failed_at = NULL, dead_at = NULL,
            queued_at = CASE WHEN q.dead_at IS NULL THEN q.queued_at ELSE now() END,
            lease_token = NULL, lease_until = NULL, bulk = false;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        INSERT INTO {queue} AS q ({keys}) VALUES ({new_keys})
        ON CONFLICT ({keys}) DO UPDATE
        SET seq = excluded.seq, not_before = now(), attempts = 0, last_error = NULL,
            first_failed_at = NULL, last_failed_at = NULL, dead_at = NULL,
            queued_at = CASE WHEN q.dead_at IS NULL THEN q.queued_at ELSE now() END,
            lease_token = NULL, lease_until = NULL, bulk = false;
    END IF;
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION {capture_fn}() FROM PUBLIC;
CREATE OR REPLACE TRIGGER {rows_trigger} AFTER INSERT OR DELETE ON {table}
    FOR EACH ROW EXECUTE FUNCTION {capture_fn}();
CREATE OR REPLACE TRIGGER {updates_trigger} AFTER UPDATE OF {watched} ON {table}
    FOR EACH ROW WHEN (ROW({old_watched}) IS DISTINCT FROM ROW({new_watched}))  -- as text: 1.5 -> 1.50 is a change
    EXECUTE FUNCTION {capture_fn}();

-- name: truncate
-- TRUNCATE fires no row trigger: empty the queue and the store with the source.
CREATE OR REPLACE FUNCTION {truncate_fn}() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    TRUNCATE {queue}, {store};
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION {truncate_fn}() FROM PUBLIC;
CREATE OR REPLACE TRIGGER {truncate_trigger} AFTER TRUNCATE ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION {truncate_fn}();

-- name: partition_truncate
-- TRUNCATE of one partition fires no trigger of the partitioned table: queue the keys of the vectors whose
-- rows are gone; the worker removes them after reading the table itself. Never a TRUNCATE or a DELETE here:
-- rows another transaction is inserting, or rows row-level security hides from this function's owner,
-- are not gone. (TRUNCATE of the whole table empties the store through the table's own trigger.)
CREATE OR REPLACE FUNCTION {partition_truncate_fn}() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO {queue} AS q ({keys})
    SELECT {e_keys} FROM {store} e WHERE NOT EXISTS (SELECT FROM {table} t WHERE {t_is_e})
    ON CONFLICT ({keys}) DO UPDATE
    SET seq = excluded.seq, not_before = now(), attempts = 0, last_error = NULL,
        first_failed_at = NULL, last_failed_at = NULL, dead_at = NULL,
        queued_at = CASE WHEN q.dead_at IS NULL THEN q.queued_at ELSE now() END,
        lease_token = NULL, lease_until = NULL, bulk = false;
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION {partition_truncate_fn}() FROM PUBLIC

-- name: partitions
-- Every partition of a partitioned source, at any depth, that lacks syncer's TRUNCATE trigger.
SELECT n.nspname, c.relname
FROM pg_partition_tree(to_regclass(quote_ident(%(schema)s) || '.' || quote_ident(%(name)s))) p
JOIN pg_class c ON c.oid = p.relid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE p.level > 0
  AND NOT EXISTS (SELECT FROM pg_trigger g WHERE g.tgrelid = p.relid AND g.tgname = %(trigger)s)

-- name: partition_trigger
-- The TRUNCATE trigger of one partition.
CREATE TRIGGER {truncate_trigger} AFTER TRUNCATE ON {partition}
    FOR EACH STATEMENT EXECUTE FUNCTION {partition_truncate_fn}()

-- name: notify
-- One NOTIFY per statement (constant payload: the source name) wakes the workers.
CREATE OR REPLACE TRIGGER {notify_trigger} AFTER INSERT OR DELETE OR UPDATE OF {watched} ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION syncer.notify_v1({name});

-- name: drop_notify
-- Poll-only mode: no NOTIFY on the writer's commit.
DROP TRIGGER IF EXISTS {notify_trigger} ON {table}

-- name: drop
-- Remove the source's triggers (the partitions' go with their function) and trigger functions.
DROP TRIGGER IF EXISTS {rows_trigger} ON {table};
DROP TRIGGER IF EXISTS {updates_trigger} ON {table};
DROP TRIGGER IF EXISTS {truncate_trigger} ON {table};
DROP TRIGGER IF EXISTS {notify_trigger} ON {table};
DROP FUNCTION IF EXISTS {capture_fn}();
DROP FUNCTION IF EXISTS {truncate_fn}();
DROP FUNCTION IF EXISTS {partition_truncate_fn}() CASCADE
