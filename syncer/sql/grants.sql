-- name: worker_schema
-- The worker reads syncer's registry (and the migration it is at) and calls what the owner gave it to call.
GRANT USAGE ON SCHEMA syncer TO {role};
GRANT SELECT ON syncer.sources, syncer.alembic_version TO {role};
GRANT USAGE ON SEQUENCE syncer.change_seq TO {role};
GRANT EXECUTE ON FUNCTION syncer.applied_v1(text), syncer.pending_rows(bigint) TO {role}

-- name: worker_source
-- Per source: read the key and the embedded columns, move the change log into the queue (FOR UPDATE needs
-- UPDATE), work the queue, write the store, build its index.
GRANT SELECT ({columns}) ON {table} TO {role};
GRANT SELECT, UPDATE, DELETE ON {log} TO {role};
GRANT SELECT, INSERT, UPDATE, DELETE ON {queue}, {store} TO {role};
GRANT EXECUTE ON FUNCTION {index_fn}(bigint, integer, integer, integer) TO {role}

-- name: reader_source
-- Per source: call the search functions, which read the source's rows and the store's keys, chunks, vectors
-- and tsvectors (not content_hash: an unsalted hash of the text would let a reader confirm a guess of text it
-- may not read).
GRANT USAGE ON SCHEMA syncer TO {role};
GRANT EXECUTE ON FUNCTION {functions} TO {role};
GRANT SELECT ON {table} TO {role};
GRANT SELECT ({keys}, chunk, chunk_start, chunk_end, chunk_text, embedding, fts) ON {store} TO {role}

-- name: schema_usage
-- USAGE on a schema, for a role that lacks it (PUBLIC's usual USAGE on public suffices).
GRANT USAGE ON SCHEMA {schema} TO {role}

-- name: lacks_usage
-- The schemas (of the sources, the stores, pgvector) on which the role has no USAGE yet.
SELECT s FROM unnest(%(schemas)s::text[]) s WHERE NOT has_schema_privilege(%(role)s, s, 'USAGE') ORDER BY s

-- name: role
-- Whether the role exists.
SELECT true FROM pg_roles WHERE rolname = %(role)s
