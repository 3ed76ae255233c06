-- name: begin
-- Record that a re-embed with this model is under way (a restart resumes it).
UPDATE syncer.sources SET reembed_model = %(model)s, reembed_dimensions = %(dimensions)s WHERE name = %(name)s

-- name: discard
-- Drop a shadow store and its queue (an abandoned re-embed, e.g. to another model).
DROP TABLE IF EXISTS {store};
DROP TABLE IF EXISTS {queue}

-- name: switch
-- Atomically replace the store by the shadow built beside it; searches wait for the commit, then see the new one.
LOCK TABLE {store} IN ACCESS EXCLUSIVE MODE;
DROP TABLE {store};
DROP TABLE {shadow_queue};
ALTER TABLE {shadow} RENAME TO {store_name};
ALTER TABLE {renamed} SET SCHEMA {store_schema}

-- name: finish
-- The registry follows the switch: the store now holds the new model's vectors.
UPDATE syncer.sources
SET model = reembed_model, dimensions = reembed_dimensions, reembed_model = NULL, reembed_dimensions = NULL
WHERE name = %(name)s
