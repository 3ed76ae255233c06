-- name: read
-- What the registry remembers of a source.
SELECT name, model, dimensions, definition, backfilled_at IS NOT NULL, reembed_model, reembed_dimensions, objects,
       source_table, store_table
FROM syncer.sources WHERE name = %(name)s

-- name: store_owner
-- Another source already applied with this store.
SELECT name FROM syncer.sources WHERE store_table = %(store)s AND name <> %(name)s

-- name: lock
-- Apply takes the source's registry row before any DDL: settles in flight (which hold it FOR SHARE) finish
-- first, and none starts until the apply commits (never a settle waiting on DDL while holding the row).
SELECT FROM syncer.sources WHERE name = %(name)s FOR UPDATE

-- name: fence
-- The applied model(s) and definition, locked FOR SHARE until the settle commits (a switch or adoption waits).
SELECT model, reembed_model, definition FROM syncer.applied_v1(%(name)s)

-- name: record
-- Record a source the first time it is applied: its model and text definition.
INSERT INTO syncer.sources (name, source_table, store_table, model, dimensions, config, definition)
VALUES (%(name)s, %(source_table)s, %(store_table)s, %(model)s, %(dimensions)s, %(config)s, %(definition)s)
ON CONFLICT (name) DO NOTHING

-- name: adopt
-- The source's text definition is now this one (a source recorded before 0.2 gets its first).
UPDATE syncer.sources SET definition = %(definition)s, config = %(config)s WHERE name = %(name)s

-- name: installed
-- The fingerprint of the objects apply installed for the source (unchanged next time: no DDL at all).
UPDATE syncer.sources SET objects = %(objects)s WHERE name = %(name)s

-- name: mark_backfilled
-- The source's existing rows are queued: later runs only follow changes.
UPDATE syncer.sources SET backfilled_at = now() WHERE name = %(name)s

-- name: forget
-- Remove a source from the registry.
DELETE FROM syncer.sources WHERE name = %(name)s
