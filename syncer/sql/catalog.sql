-- name: database
-- The database's encoding: syncer's text handling (and its whitespace) needs UTF8.
SELECT pg_encoding_to_char(encoding) FROM pg_database WHERE datname = current_database()

-- name: find_table
-- The table a source names, resolved like the application would (search_path for bare names).
SELECT c.oid, n.nspname, c.relname, c.relkind::text
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = to_regclass(
    CASE WHEN %(schema)s::text IS NULL THEN quote_ident(%(name)s)
         ELSE quote_ident(%(schema)s) || '.' || quote_ident(%(name)s) END)

-- name: table_columns
-- Columns of a table in table order: name, SQL type, NOT NULL, and the type beneath any domains.
WITH RECURSIVE base AS (
    SELECT a.attnum, a.atttypid AS typid, 0 AS depth
    FROM pg_attribute a
    WHERE a.attrelid = %(oid)s AND a.attnum > 0 AND NOT a.attisdropped
    UNION ALL
    SELECT b.attnum, t.typbasetype, b.depth + 1
    FROM base b JOIN pg_type t ON t.oid = b.typid
    WHERE t.typtype = 'd'
)
SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
       n.nspname, t.typname, t.typtype::text, t.typcategory::text,
       EXISTS (SELECT FROM pg_depend d JOIN pg_extension x ON x.oid = d.refobjid
               WHERE d.classid = 'pg_type'::regclass AND d.objid = t.oid AND d.deptype = 'e'
                 AND x.extname = 'citext') AS citext
FROM pg_attribute a
CROSS JOIN LATERAL (SELECT typid FROM base WHERE base.attnum = a.attnum ORDER BY depth DESC LIMIT 1) b
JOIN pg_type t ON t.oid = b.typid
JOIN pg_namespace n ON n.oid = t.typnamespace
WHERE a.attrelid = %(oid)s AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum

-- name: primary_key
-- The primary key columns of a table, in key order.
SELECT a.attname
FROM pg_index i
CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = %(oid)s AND i.indisprimary
ORDER BY k.ord

-- name: unique_key
-- Whether some valid, total unique index (the primary key among them) is on key columns only.
SELECT EXISTS (
    SELECT FROM pg_index i
    WHERE i.indrelid = %(oid)s AND i.indisunique AND i.indisvalid
      AND i.indpred IS NULL AND i.indexprs IS NULL
      AND NOT EXISTS (
          SELECT FROM unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
          WHERE k.ord <= i.indnkeyatts AND a.attname <> ALL(%(keys)s)))

-- name: row_security
-- Whether row-level security hides rows of a table from this role (rows it cannot see would look deleted).
SELECT c.relrowsecurity AND NOT (r.rolsuper OR r.rolbypassrls)
           AND (c.relforcerowsecurity OR NOT pg_has_role(c.relowner, 'USAGE')) AS hidden,
       c.relforcerowsecurity, pg_get_userbyid(c.relowner), current_user
FROM pg_class c CROSS JOIN pg_roles r
WHERE c.oid = %(oid)s AND r.rolname = current_user

-- name: relation
-- A relation by schema and name (NULL: there is none).
SELECT to_regclass(quote_ident(%(schema)s) || '.' || quote_ident(%(name)s))::oid

-- name: store_dimensions
-- The dimension of an existing store's embedding column (NULL: no such store).
SELECT a.atttypmod
FROM pg_attribute a
WHERE a.attrelid = to_regclass(quote_ident(%(schema)s) || '.' || quote_ident(%(name)s))
  AND a.attname = 'embedding' AND NOT a.attisdropped

-- name: vector_schema
-- The schema pgvector lives in (NULL: not installed yet); its type, operators and opclasses are named with it.
SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'vector'

-- name: migrated
-- Whether syncer's migrations were ever run here.
SELECT to_regclass('syncer.alembic_version') IS NOT NULL

-- name: migration
-- The revision syncer's own schema is at.
SELECT version_num FROM syncer.alembic_version

-- name: installed
-- Whether all of a source's objects exist (someone may have dropped one by hand).
SELECT to_regclass(%(queue)s) IS NOT NULL AND to_regclass(%(store)s) IS NOT NULL
   AND (SELECT count(*) FROM pg_trigger WHERE tgrelid = to_regclass(%(table)s) AND tgname = ANY(%(triggers)s))
       = cardinality(%(triggers)s::text[])
   AND NOT EXISTS (SELECT FROM unnest(%(functions)s::text[]) f WHERE to_regprocedure(f) IS NULL)

-- name: lock_holders
-- Who holds a lock on a table that syncer's DDL waits for (for the log line that says it gave way).
SELECT string_agg(format('pid %%s of %%s, in a transaction for %%s', a.pid, a.usename,
                         date_trunc('second', now() - a.xact_start)), '; ')
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.relation IN (to_regclass(%(table)s), to_regclass(%(queue)s)) AND l.granted AND l.pid <> pg_backend_pid()
  AND l.mode <> 'AccessShareLock'

-- name: search_config
-- Whether pg_catalog has this text search configuration.
SELECT EXISTS (SELECT FROM pg_ts_config c WHERE c.cfgnamespace = 'pg_catalog'::regnamespace AND c.cfgname = %(name)s)
