-- name: enqueue_missing
-- Backfill: queue every row that has text but no vector yet.
INSERT INTO {queue} ({keys})
SELECT {t_keys} FROM {table} t
WHERE {text} IS NOT NULL AND NOT EXISTS (SELECT FROM {store} e WHERE {t_is_e})
ON CONFLICT DO NOTHING

-- name: enqueue_stale
-- Reconcile: queue every row with text whose vector is missing or was made from other text.
INSERT INTO {queue} ({keys})
SELECT {t_keys} FROM {table} t LEFT JOIN {store} e ON {t_is_e}
WHERE {text} IS NOT NULL AND e.content_hash IS DISTINCT FROM sha256(convert_to({text}, 'UTF8'))
ON CONFLICT DO NOTHING

-- name: enqueue_orphans
-- Vectors whose row is gone (e.g. deleted while the triggers were off).
INSERT INTO {queue} ({keys})
SELECT {e_keys} FROM {store} e
WHERE NOT EXISTS (SELECT FROM {table} t WHERE {t_is_e})
ON CONFLICT DO NOTHING

-- name: claim
-- Lease up to %(limit)s ready keys and read each one's current text and stored hash.
WITH picked AS (
    SELECT {keys} FROM {queue}
    WHERE not_before <= now() AND (lease_until IS NULL OR lease_until < now())
    ORDER BY seq
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE {queue} q
    SET lease_token = %(token)s, lease_until = now() + make_interval(secs => %(lease)s)
    FROM picked p
    WHERE {q_is_p}
    RETURNING q.seq, {q_keys}
)
SELECT c.seq, ROW({c_keys})::text AS key, d.text, sha256(convert_to(d.text, 'UTF8')) AS hash,
       e.content_hash, e.model
FROM claimed c
LEFT JOIN LATERAL (SELECT {text} AS text FROM {table} t WHERE {t_is_c}) d ON true
LEFT JOIN {store} e ON {e_is_c}

-- name: store
-- Upsert vectors still ours (lease held, seq unchanged) whose row still has the embedded text; ack them.
WITH input AS (
    SELECT * FROM unnest(%(seqs)s::bigint[], %(hashes)b::bytea[], %(embeddings)b::vector[]) AS i(seq, hash, embedding)
), owned AS (
    SELECT q.seq, {q_keys} FROM {queue} q
    WHERE q.seq = ANY(%(seqs)s) AND q.lease_token = %(token)s
    FOR UPDATE SKIP LOCKED
), current AS (
    SELECT o.*, i.hash, i.embedding
    FROM owned o JOIN input i ON i.seq = o.seq JOIN {table} t ON {t_is_o}
    WHERE sha256(convert_to({text}, 'UTF8')) = i.hash
), stored AS (
    INSERT INTO {store} AS e ({keys}, embedding, content_hash, model, embedded_at)
    SELECT {c_keys}, c.embedding, c.hash, %(model)s, now() FROM current c
    ON CONFLICT ({keys}) DO UPDATE
    SET embedding = excluded.embedding, content_hash = excluded.content_hash,
        model = excluded.model, embedded_at = excluded.embedded_at
)
DELETE FROM {queue} q USING current c WHERE q.seq = c.seq
RETURNING q.seq

-- name: unstore
-- Drop the vectors of keys (still ours) whose row is gone or has no text now; ack them.
WITH owned AS (
    SELECT q.seq, {q_keys} FROM {queue} q
    WHERE q.seq = ANY(%(seqs)s) AND q.lease_token = %(token)s
    FOR UPDATE SKIP LOCKED
), gone AS (
    SELECT o.* FROM owned o
    WHERE NOT EXISTS (SELECT FROM {table} t WHERE {t_is_o} AND {text} IS NOT NULL)
), unstored AS (
    DELETE FROM {store} e USING gone g WHERE {e_is_g}
)
DELETE FROM {queue} q USING gone g WHERE q.seq = g.seq
RETURNING q.seq

-- name: ack
-- Acknowledge keys (still ours) that needed no new vector: their text is what is stored.
DELETE FROM {queue} q
USING (SELECT seq FROM {queue} WHERE seq = ANY(%(seqs)s) AND lease_token = %(token)s FOR UPDATE SKIP LOCKED) o
WHERE q.seq = o.seq
RETURNING q.seq

-- name: fail
-- Record a row's error and back it off (exponential, with jitter); the others flow on.
UPDATE {queue} q
SET attempts = q.attempts + 1, last_error = f.error,
    not_before = now() + make_interval(secs => least(%(max)s, %(base)s * 2 ^ q.attempts) * (0.5 + random() / 2)),
    lease_token = NULL, lease_until = NULL
FROM unnest(%(seqs)s::bigint[], %(errors)s::text[]) AS f(seq, error),
     (SELECT seq FROM {queue} WHERE seq = ANY(%(seqs)s) AND lease_token = %(token)s FOR UPDATE SKIP LOCKED) o
WHERE q.seq = f.seq AND o.seq = f.seq
RETURNING q.seq

-- name: release
-- Give back whatever of the batch is still ours (changed meanwhile, or the worker is stopping).
UPDATE {queue} q SET lease_token = NULL, lease_until = NULL
FROM (SELECT seq FROM {queue} WHERE seq = ANY(%(seqs)s) AND lease_token = %(token)s FOR UPDATE SKIP LOCKED) o
WHERE q.seq = o.seq
RETURNING q.seq
