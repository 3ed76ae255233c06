-- name: dependents
-- What depends on a store that a re-embed could not carry over to the new store (the switch would fail, or lose it).
SELECT format('view %%s', v.oid::regclass) FROM pg_depend d
JOIN pg_rewrite r ON r.oid = d.objid JOIN pg_class v ON v.oid = r.ev_class
WHERE d.classid = 'pg_rewrite'::regclass AND d.refobjid = %(store)s::regclass AND v.oid <> %(store)s::regclass
UNION
SELECT format('foreign key %%I of %%s', c.conname, c.conrelid::regclass) FROM pg_constraint c
WHERE c.contype = 'f' AND c.confrelid = %(store)s::regclass
UNION
SELECT format('trigger %%I', t.tgname) FROM pg_trigger t
WHERE t.tgrelid = %(store)s::regclass AND NOT t.tgisinternal
UNION
SELECT format('index %%s', i.indexrelid::regclass) FROM pg_index i
WHERE i.indrelid = %(store)s::regclass AND NOT i.indisprimary
  AND i.indexrelid <> ALL(ARRAY[to_regclass(%(index)s), to_regclass(%(fts_index)s), to_regclass(%(chunk_index)s)]
                         ::oid[])
UNION
SELECT format('publication %%I', p.pubname) FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
WHERE pr.prrelid = %(store)s::regclass
ORDER BY 1

-- name: begin
-- Record that a re-embed with this model is under way (a restart resumes it).
UPDATE syncer.sources SET reembed_model = %(model)s, reembed_dimensions = %(dimensions)s WHERE name = %(name)s

-- name: discard
-- Drop a shadow store and its queue (an abandoned re-embed, e.g. to another model).
DROP TABLE IF EXISTS {store};
DROP TABLE IF EXISTS {queue}

-- name: carried
-- What the live store carries that the new one must keep: its owner, privileges (table and column), row-level
-- security and policies, and comment, as the statements that give them to the new store.
SELECT format('ALTER TABLE %%s OWNER TO %%I', %(target)s::text, pg_get_userbyid(c.relowner))
FROM pg_class c WHERE c.oid = %(store)s::regclass
UNION ALL
SELECT format('GRANT %%s ON %%s TO %%s%%s', a.privilege_type, %(target)s::text,
              CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END,
              CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END)
FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) a
WHERE c.oid = %(store)s::regclass AND a.grantee <> c.relowner
UNION ALL
SELECT format('GRANT %%s (%%I) ON %%s TO %%s%%s', a.privilege_type, att.attname, %(target)s::text,
              CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END,
              CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END)
FROM pg_attribute att CROSS JOIN LATERAL aclexplode(att.attacl) a
WHERE att.attrelid = %(store)s::regclass AND att.attnum > 0 AND NOT att.attisdropped
UNION ALL
SELECT format('ALTER TABLE %%s ENABLE ROW LEVEL SECURITY', %(target)s::text)
FROM pg_class c WHERE c.oid = %(store)s::regclass AND c.relrowsecurity
UNION ALL
SELECT format('ALTER TABLE %%s FORCE ROW LEVEL SECURITY', %(target)s::text)
FROM pg_class c WHERE c.oid = %(store)s::regclass AND c.relforcerowsecurity
UNION ALL
SELECT format('CREATE POLICY %%I ON %%s AS %%s FOR %%s TO %%s%%s%%s', p.policyname, %(target)s::text, p.permissive, p.cmd,
              (SELECT string_agg(CASE WHEN r = 'public' THEN 'PUBLIC' ELSE quote_ident(r) END, ', ')
               FROM unnest(p.roles) r),
              ' USING (' || p.qual || ')', ' WITH CHECK (' || p.with_check || ')')
FROM pg_policies p
WHERE p.schemaname = %(schema)s AND p.tablename = %(name)s
UNION ALL
SELECT format('COMMENT ON TABLE %%s IS %%L', %(target)s::text, d.description)
FROM pg_description d WHERE d.objoid = %(store)s::regclass AND d.objsubid = 0
    AND d.classoid = 'pg_class'::regclass

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
