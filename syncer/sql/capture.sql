-- name: capture
-- Row triggers: record the changed key (and the old key of a deleted or re-keyed row).
CREATE OR REPLACE FUNCTION {capture_fn}() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_OP = 'DELETE' OR (TG_OP = 'UPDATE' AND ROW({old_keys}) IS DISTINCT FROM ROW({new_keys})) THEN
        INSERT INTO {queue} ({keys}) VALUES ({old_keys})
        ON CONFLICT ({keys}) DO UPDATE
        SET seq = excluded.seq, not_before = now(), attempts = 0, last_error = NULL,
            lease_token = NULL, lease_until = NULL;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        INSERT INTO {queue} ({keys}) VALUES ({new_keys})
        ON CONFLICT ({keys}) DO UPDATE
        SET seq = excluded.seq, not_before = now(), attempts = 0, last_error = NULL,
            lease_token = NULL, lease_until = NULL;
    END IF;
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION {capture_fn}() FROM PUBLIC;
DROP TRIGGER IF EXISTS {rows_trigger} ON {table};
CREATE TRIGGER {rows_trigger} AFTER INSERT OR DELETE ON {table}
    FOR EACH ROW EXECUTE FUNCTION {capture_fn}();
DROP TRIGGER IF EXISTS {updates_trigger} ON {table};
CREATE TRIGGER {updates_trigger} AFTER UPDATE OF {watched} ON {table}
    FOR EACH ROW WHEN (ROW({old_watched}) IS DISTINCT FROM ROW({new_watched}))
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
DROP TRIGGER IF EXISTS {truncate_trigger} ON {table};
CREATE TRIGGER {truncate_trigger} AFTER TRUNCATE ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION {truncate_fn}();

-- name: notify
-- One NOTIFY per statement (constant payload: the source name) wakes the workers.
DROP TRIGGER IF EXISTS {notify_trigger} ON {table};
CREATE TRIGGER {notify_trigger} AFTER INSERT OR DELETE OR UPDATE OF {watched} ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION syncer.notify_v1({name});

-- name: drop_notify
-- Poll-only mode: no NOTIFY on the writer's commit.
DROP TRIGGER IF EXISTS {notify_trigger} ON {table}
