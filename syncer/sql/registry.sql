-- name: read
-- What the registry remembers of a source; FOR SHARE (in a settle) holds off a switch or an adoption meanwhile.
SELECT name, model, dimensions, definition, backfilled_at IS NOT NULL, reembed_model, reembed_dimensions
FROM syncer.sources WHERE name = %(name)s

-- name: record
-- Record a source the first time it is applied: its model and text definition.
INSERT INTO syncer.sources (name, source_table, store_table, model, dimensions, config, definition)
VALUES (%(name)s, %(source_table)s, %(store_table)s, %(model)s, %(dimensions)s, %(config)s, %(definition)s)
ON CONFLICT (name) DO NOTHING

-- name: adopt
-- The source's text definition is now this one (a source recorded before 0.2 gets its first).
UPDATE syncer.sources SET definition = %(definition)s, config = %(config)s WHERE name = %(name)s

-- name: mark_backfilled
-- The source's existing rows are queued: later runs only follow changes.
UPDATE syncer.sources SET backfilled_at = now() WHERE name = %(name)s

-- name: forget
-- Remove a source from the registry.
DELETE FROM syncer.sources WHERE name = %(name)s
