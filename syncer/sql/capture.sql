-- name: capture
-- Statement triggers: a capturing statement appends ONE row to the source's change log, holding the keys it
-- changed as arrays: inserted and deleted keys, and for an UPDATE the old and new key of every row whose key or
-- embedded text changed (old and new rows matched per key by a hash full join; embedded columns compared as
-- text, NULL-safe: 1.5 -> 1.50 is a change). The workers move logged keys into the queue, where repeated
-- changes coalesce. One row per statement, not one queue upsert per row: that is what makes capture cheap.
-- A function per operation: only the UPDATE's join needs a setting of its own (set and restored on every
-- call); the INSERT's and the DELETE's (append, below) are created first. CREATE OR REPLACE TRIGGER takes
-- SHARE ROW EXCLUSIVE on the table (readers never wait for it, nor it for them); 0.2's one function for all
-- three goes.
CREATE OR REPLACE FUNCTION {updates_fn}() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET enable_mergejoin = off AS $$
DECLARE
    logged bigint;
BEGIN
{update_guard}
    INSERT INTO {log} ({keys}, changed)
    SELECT {key_arrays}, count(*) FROM (
        SELECT {keys} FROM syncer_old o FULL JOIN syncer_new n USING ({keys})
        WHERE {o_key} IS NULL OR {n_key} IS NULL OR ROW({o_compared}) IS DISTINCT FROM ROW({n_compared})
    ) changed
    HAVING count(*) > 0;
{wake}
END
$$;
REVOKE ALL ON FUNCTION {updates_fn}() FROM PUBLIC;
CREATE OR REPLACE TRIGGER {inserts_trigger} AFTER INSERT ON {table}
    REFERENCING NEW TABLE AS syncer_new FOR EACH STATEMENT EXECUTE FUNCTION {inserts_fn}();
CREATE OR REPLACE TRIGGER {updates_trigger} AFTER UPDATE ON {table}
    REFERENCING OLD TABLE AS syncer_old NEW TABLE AS syncer_new FOR EACH STATEMENT EXECUTE FUNCTION {updates_fn}();
CREATE OR REPLACE TRIGGER {deletes_trigger} AFTER DELETE ON {table}
    REFERENCING OLD TABLE AS syncer_old FOR EACH STATEMENT EXECUTE FUNCTION {deletes_fn}();
DROP FUNCTION IF EXISTS {capture_fn}()

-- name: append
-- The capture function of an INSERT or a DELETE: the keys of its transition table, in one log row.
CREATE OR REPLACE FUNCTION {append_fn}() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    logged bigint;
BEGIN
    INSERT INTO {log} ({keys}, changed) SELECT {key_arrays}, count(*) FROM {rows} HAVING count(*) > 0;
{wake}
END
$$;
REVOKE ALL ON FUNCTION {append_fn}() FROM PUBLIC

-- name: wake
-- (inside each capture function) The wake-up: NOTIFY only while a worker sleeps armed (it holds the wake lock
-- exclusively); otherwise hold the lock shared until commit, so that a worker about to sleep waits for this
-- commit and then sees the change. Writers never wait on each other or on a worker here.
    GET DIAGNOSTICS logged = ROW_COUNT;
    IF logged > 0 AND NOT pg_try_advisory_xact_lock_shared({wake_lock}, 0)
       AND pg_notification_queue_usage() < 0.5 THEN
        PERFORM pg_notify('syncer', {name});
    END IF;
    RETURN NULL;

-- name: drop_rows
-- Capture of 0.1 (row triggers, one NOTIFY per statement), replaced by the statement triggers in the same
-- transaction: no change goes uncaptured in between.
DROP TRIGGER IF EXISTS {rows_trigger} ON {table};
DROP TRIGGER IF EXISTS {notify_trigger} ON {table};
DROP FUNCTION IF EXISTS {rows_fn}()

-- name: update_guard
-- (inside the capture function) Skip comparing an UPDATE that named no embedded or key column: the mark
-- trigger, which fires first (triggers fire in name order), marks the statements that did.
        IF current_setting({mark_setting}, true) IS DISTINCT FROM 'on' THEN
            RETURN NULL;
        END IF;
        PERFORM set_config({mark_setting}, '', true);

-- name: mark
-- UPDATE OF the watched columns marks the statement for the update guard (a column list is allowed here:
-- this trigger has no transition tables). Its name sorts before the capture trigger's.
CREATE OR REPLACE FUNCTION {mark_fn}() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM set_config({mark_setting}, 'on', true);
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION {mark_fn}() FROM PUBLIC;
CREATE OR REPLACE TRIGGER {mark_trigger} AFTER UPDATE OF {watched} ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION {mark_fn}()

-- name: drop_mark
-- The table has a BEFORE UPDATE row trigger of its own (it may change an embedded column the UPDATE did not
-- name): compare every UPDATE.
DROP TRIGGER IF EXISTS {mark_trigger} ON {table};
DROP FUNCTION IF EXISTS {mark_fn}()

-- name: before_update_triggers
-- BEFORE UPDATE row triggers of the table's own (any of them may rewrite an embedded column the UPDATE did not
-- name): the update guard is installed only when there are none.
SELECT count(*) FROM pg_trigger
WHERE tgrelid = to_regclass(%(table)s) AND NOT tgisinternal
  AND (tgtype::int & 1) = 1 AND (tgtype::int & 2) = 2 AND (tgtype::int & 16) = 16

-- name: triggers
-- The names of the table's own triggers.
SELECT tgname::text FROM pg_trigger WHERE tgrelid = to_regclass(%(table)s) AND NOT tgisinternal ORDER BY 1

-- name: capture_rows
-- A partitioned source keeps row triggers, which PostgreSQL clones to every partition (also those created
-- later), where statement triggers of the partitioned table do not fire for DML that names a partition: record
-- the changed key (and the old key of a deleted or re-keyed row) in the queue, coalescing repeated changes.
CREATE OR REPLACE FUNCTION {rows_fn}() RETURNS trigger
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
REVOKE ALL ON FUNCTION {rows_fn}() FROM PUBLIC;
CREATE OR REPLACE TRIGGER {rows_trigger} AFTER INSERT OR DELETE ON {table}
    FOR EACH ROW EXECUTE FUNCTION {rows_fn}();
CREATE OR REPLACE TRIGGER {updates_trigger} AFTER UPDATE OF {watched} ON {table}
    FOR EACH ROW WHEN (ROW({old_watched}) IS DISTINCT FROM ROW({new_watched}))  -- as text: 1.5 -> 1.50 is a change
    EXECUTE FUNCTION {rows_fn}()

-- name: notify
-- (partitioned sources) One NOTIFY per statement (constant payload: the source name) wakes the workers.
CREATE OR REPLACE TRIGGER {notify_trigger} AFTER INSERT OR DELETE OR UPDATE OF {watched} ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION syncer.notify_v1({name})

-- name: drop_notify
-- Poll-only mode: no NOTIFY on the writer's commit.
DROP TRIGGER IF EXISTS {notify_trigger} ON {table}

-- name: truncate
-- TRUNCATE fires no row or DML trigger: empty the queue, the change log and the store with the source.
CREATE OR REPLACE FUNCTION {truncate_fn}() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    TRUNCATE {queue}, {log}, {store};
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION {truncate_fn}() FROM PUBLIC;
CREATE OR REPLACE TRIGGER {truncate_trigger} AFTER TRUNCATE ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION {truncate_fn}()

-- name: partition_truncate
-- TRUNCATE of one partition fires no trigger of the partitioned table: queue the keys of the vectors whose
-- rows are gone; the worker removes them after reading the table itself. Never a TRUNCATE or a DELETE here:
-- rows another transaction is inserting, or rows row-level security hides from this function's owner,
-- are not gone. (TRUNCATE of the whole table empties the store through the table's own trigger.)
CREATE OR REPLACE FUNCTION {partition_truncate_fn}() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO {queue} AS q ({keys})
    SELECT {e_keys} FROM {store} e WHERE e.chunk = 0 AND NOT EXISTS (SELECT FROM {table} t WHERE {t_is_e})
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

-- name: drop
-- Remove the source's triggers (the partitions' go with their function) and trigger functions.
DROP TRIGGER IF EXISTS {inserts_trigger} ON {table};
DROP TRIGGER IF EXISTS {updates_trigger} ON {table};
DROP TRIGGER IF EXISTS {deletes_trigger} ON {table};
DROP TRIGGER IF EXISTS {mark_trigger} ON {table};
DROP TRIGGER IF EXISTS {rows_trigger} ON {table};
DROP TRIGGER IF EXISTS {truncate_trigger} ON {table};
DROP TRIGGER IF EXISTS {notify_trigger} ON {table};
DROP FUNCTION IF EXISTS {inserts_fn}();
DROP FUNCTION IF EXISTS {deletes_fn}();
DROP FUNCTION IF EXISTS {updates_fn}();
DROP FUNCTION IF EXISTS {capture_fn}();
DROP FUNCTION IF EXISTS {mark_fn}();
DROP FUNCTION IF EXISTS {rows_fn}();
DROP FUNCTION IF EXISTS {truncate_fn}();
DROP FUNCTION IF EXISTS {partition_truncate_fn}() CASCADE
