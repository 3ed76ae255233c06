-- name: enqueue_rows
-- Backfill or reconcile, one keyset batch: the next %(limit)s rows of the table after the last key seen, in
-- key order; queue those whose vector is missing (reconciling: or not of their text, or there though they
-- have no text). Returns how many were queued and the last key seen (no row: the table is done). Each batch
-- commits: a writer never waits long on a queue row.
WITH batch AS (
    SELECT {t_keys}, {text} AS text FROM {table} t WHERE {after} ORDER BY {t_keys} LIMIT %(limit)s
), queued AS (
    INSERT INTO {queue} AS q ({keys}, refresh, bulk)
    SELECT {b_keys}, {refresh}, true FROM batch b LEFT JOIN {store} e ON {b_is_e} AND e.chunk = 0
    WHERE {wanted_test}
    ORDER BY octet_length(b.text)  -- seqs in length order: a claimed window holds texts of similar length
    {on_conflict}
    RETURNING 1
)
SELECT (SELECT count(*) FROM queued), {b_keys} FROM batch b ORDER BY {b_keys_desc} LIMIT 1

-- name: enqueue_orphans
-- Reconcile, one keyset batch of the store: queue stored keys whose row is gone (deleted while the triggers
-- were off, say). Returns how many were queued and the last key seen.
WITH batch AS (
    SELECT {e_keys} FROM {store} e WHERE e.chunk = 0 AND {after} ORDER BY {e_keys} LIMIT %(limit)s
), queued AS (
    INSERT INTO {queue} AS q ({keys}, refresh, bulk)
    SELECT {b_keys}, {refresh}, true FROM batch b WHERE NOT EXISTS (SELECT FROM {table} t WHERE {t_is_b})
    {on_conflict}
    RETURNING 1
)
SELECT (SELECT count(*) FROM queued), {b_keys} FROM batch b ORDER BY {b_keys_desc} LIMIT 1

-- name: expand
-- Before a claim, in its transaction: move up to %(limit)s logged statements into the queue, one queue row per key
-- in the order of its first logged change. A key changed again gets a new seq, loses its lease and starts afresh
-- (attempts, backoff, dead): it is live work again. One worker at a time per source (two expansions upserting
-- overlapping keys in different orders would deadlock); the others claim what is queued already.
WITH gate AS (
    SELECT pg_try_advisory_xact_lock({expand_lock}, hashtext({name})) AS ours
), moved AS (
    DELETE FROM {log} l
    WHERE l.ctid = ANY (ARRAY(
        SELECT ctid FROM {log} WHERE (SELECT ours FROM gate) LIMIT %(limit)s FOR UPDATE SKIP LOCKED))
    RETURNING l.*
), changed AS (
    SELECT {u_keys}, min(m.seq) AS first_seq, min(m.logged_at) AS logged_at
    FROM moved m CROSS JOIN LATERAL unnest({m_keys}) AS u({keys})
    GROUP BY {u_keys}
)
INSERT INTO {queue} AS q ({keys}, queued_at)
SELECT {keys}, logged_at FROM changed ORDER BY first_seq, {keys}
ON CONFLICT ({keys}) DO UPDATE
SET seq = excluded.seq, not_before = now(), attempts = 0, last_error = NULL,
    first_failed_at = NULL, last_failed_at = NULL, dead_at = NULL,
    queued_at = CASE WHEN q.dead_at IS NULL THEN q.queued_at ELSE excluded.queued_at END,
    lease_token = NULL, lease_until = NULL, bulk = false

-- name: ready
-- Whether anything waits: logged changes, or queue rows ready to claim (a worker's re-check before it sleeps).
SELECT EXISTS (SELECT FROM {log})
    OR EXISTS (SELECT FROM {queue}
               WHERE dead_at IS NULL AND not_before <= now() AND (lease_until IS NULL OR lease_until < now()))

-- name: claim
-- Lease ready keys, up to %(live)s live rows and then bulk rows up to %(bulk)s rows in all (at least %(share)s
-- bulk rows when there are any), and %(bytes)s bytes of text (at least one row); read each one's current text
-- and what is stored for it. Live: changes the triggers captured, oldest first. Bulk: a backfill, reconcile or
-- adoption, in its own order (shortest texts first within each keyset batch of the backfill).
WITH live AS (
    SELECT seq, refresh, bulk, {keys} FROM {queue}
    WHERE NOT bulk AND dead_at IS NULL AND not_before <= now() AND (lease_until IS NULL OR lease_until < now())
    ORDER BY seq
    LIMIT %(live)s
    FOR UPDATE SKIP LOCKED
), backlog AS (
    SELECT seq, refresh, bulk, {keys} FROM {queue}
    WHERE bulk AND dead_at IS NULL AND not_before <= now() AND (lease_until IS NULL OR lease_until < now())
    ORDER BY seq
    LIMIT greatest(%(bulk)s - (SELECT count(*) FROM live), %(share)s)
    FOR UPDATE SKIP LOCKED
), picked AS (
    SELECT * FROM live UNION ALL SELECT * FROM backlog
), sized AS (
    SELECT p.*, d.text,
           row_number() OVER w AS n, sum(coalesce(octet_length(d.text), 0)) OVER w AS running
    FROM picked p
    LEFT JOIN LATERAL (SELECT {text} AS text FROM {table} t WHERE {t_is_p}) d ON true
    WINDOW w AS (ORDER BY p.bulk, p.seq)
), kept AS (
    SELECT * FROM sized WHERE n = 1 OR running <= %(bytes)s
), claimed AS (
    UPDATE {queue} q
    SET lease_token = %(token)s, lease_until = now() + make_interval(secs => %(lease)s)
    FROM kept k
    WHERE q.seq = k.seq
    RETURNING q.seq
)
SELECT k.seq, {k_key_text}, k.text, sha256(convert_to(k.text, 'UTF8')),
       CASE WHEN e.fts IS NOT NULL THEN e.content_hash END,  -- a vector of 0.1 has no tsvector: embed it again
       e.model, k.refresh
FROM claimed c
JOIN kept k ON k.seq = c.seq
LEFT JOIN {store} e ON {e_is_k} AND e.chunk = 0
ORDER BY k.seq

-- name: renew
-- Extend the lease of keys still ours while their batch is in hand (rows an application holds are skipped:
-- its commit requeues them anyway).
UPDATE {queue} q SET lease_until = now() + make_interval(secs => %(lease)s)
FROM (SELECT seq FROM {queue} WHERE seq = ANY(%(seqs)s) AND lease_token = %(token)s FOR UPDATE SKIP LOCKED) o
WHERE q.seq = o.seq
RETURNING q.seq

-- name: store
-- Replace the chunks of keys still ours (lease held, seq unchanged) whose row still has the embedded text,
-- each with its tsvector; ack them. A key's chunks change all at once: fewer than before, the rest go.
WITH input AS (
    SELECT * FROM unnest(%(seqs)s::bigint[], %(hashes)b::bytea[], %(chunks)s::int[], %(starts)s::int[],
                         %(ends)s::int[], %(texts)s::text[], %(embeddings)b::{vector}[])
        AS i(seq, hash, chunk, chunk_start, chunk_end, chunk_text, embedding)
), owned AS (
    SELECT q.seq, {q_keys} FROM {queue} q
    WHERE q.seq = ANY(%(seqs)s) AND q.lease_token = %(token)s
    FOR UPDATE SKIP LOCKED
), current AS (
    SELECT o.*, d.text, (SELECT count(*) FROM input i WHERE i.seq = o.seq) AS chunks
    FROM owned o
    CROSS JOIN LATERAL (SELECT {text} AS text FROM {table} t WHERE {t_is_o}) d
    WHERE sha256(convert_to(d.text, 'UTF8')) = (SELECT i.hash FROM input i WHERE i.seq = o.seq LIMIT 1)
), removed AS (
    DELETE FROM {store} e USING current c WHERE {e_is_c} AND e.chunk >= c.chunks
), stored AS (
    INSERT INTO {store} AS e ({keys}, chunk, chunk_start, chunk_end, chunk_text, embedding, content_hash, model,
                              fts, embedded_at)
    SELECT {c_keys}, i.chunk, i.chunk_start, i.chunk_end, i.chunk_text, i.embedding, i.hash, %(model)s,
           to_tsvector({search_config}, coalesce(i.chunk_text, c.text)), now()
    FROM current c JOIN input i ON i.seq = c.seq
    ON CONFLICT ({keys}, chunk) DO UPDATE
    SET chunk_start = excluded.chunk_start, chunk_end = excluded.chunk_end, chunk_text = excluded.chunk_text,
        embedding = excluded.embedding, content_hash = excluded.content_hash, model = excluded.model,
        fts = excluded.fts, embedded_at = excluded.embedded_at
)
DELETE FROM {queue} q USING current c WHERE q.seq = c.seq
RETURNING q.seq, extract(epoch FROM clock_timestamp() - q.queued_at)::float8

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
RETURNING q.seq, extract(epoch FROM clock_timestamp() - q.queued_at)::float8

-- name: ack
-- Acknowledge keys (still ours) that needed no new vector: their text is what is stored.
DELETE FROM {queue} q
USING (SELECT seq FROM {queue} WHERE seq = ANY(%(seqs)s) AND lease_token = %(token)s FOR UPDATE SKIP LOCKED) o
WHERE q.seq = o.seq
RETURNING q.seq, extract(epoch FROM clock_timestamp() - q.queued_at)::float8

-- name: fail
-- Record rows' errors and back them off (exponential, with jitter); after %(max_attempts)s attempts a row is dead.
UPDATE {queue} q
SET attempts = q.attempts + 1, last_error = f.error,
    first_failed_at = coalesce(q.first_failed_at, now()), last_failed_at = now(),
    dead_at = CASE WHEN q.attempts + 1 >= %(max_attempts)s THEN now() END,
    not_before = CASE WHEN q.attempts + 1 >= %(max_attempts)s THEN 'infinity'::timestamptz
        ELSE now() + make_interval(secs => least(%(max)s, %(base)s * 2 ^ q.attempts) * (0.5 + random() / 2)) END,
    lease_token = NULL, lease_until = NULL
FROM unnest(%(seqs)s::bigint[], %(errors)s::text[]) AS f(seq, error),
     (SELECT seq FROM {queue} WHERE seq = ANY(%(seqs)s) AND lease_token = %(token)s FOR UPDATE SKIP LOCKED) o
WHERE q.seq = f.seq AND o.seq = f.seq
RETURNING q.seq, q.dead_at IS NOT NULL

-- name: release
-- Give back whatever of the batch is still ours (changed meanwhile, or the worker is stopping).
UPDATE {queue} q SET lease_token = NULL, lease_until = NULL
FROM (SELECT seq FROM {queue} WHERE seq = ANY(%(seqs)s) AND lease_token = %(token)s FOR UPDATE SKIP LOCKED) o
WHERE q.seq = o.seq
RETURNING q.seq

-- name: release_token
-- Give back every key leased under a token (a claim whose answer was lost: which keys, nobody knows).
UPDATE {queue} q SET lease_token = NULL, lease_until = NULL
FROM (SELECT seq FROM {queue} WHERE lease_token = %(token)s FOR UPDATE SKIP LOCKED) o
WHERE q.seq = o.seq
RETURNING q.seq

-- name: taken
-- How many of these keys, unchanged since the claim, are no longer ours: their lease ran out and was taken.
SELECT count(*) FROM {queue} WHERE seq = ANY(%(seqs)s) AND lease_token IS DISTINCT FROM %(token)s

-- name: bulk_queued
-- Whether bulk work (a backfill, reconcile or re-embed) is ready or in hand: the store's index waits for it (not
-- for a failing row's backoff).
SELECT EXISTS (SELECT FROM {queue} WHERE bulk AND dead_at IS NULL AND (not_before <= now() OR lease_until > now()))

-- name: failures
-- Failing and dead rows, dead first, then the most recent failures.
SELECT {q_key_text}, q.attempts,
       CASE WHEN q.dead_at IS NOT NULL THEN 'dead' WHEN q.lease_until > now() THEN 'leased'
            WHEN q.not_before > now() THEN 'backoff' ELSE 'ready' END,
       q.first_failed_at, q.last_failed_at, q.last_error
FROM {queue} q
WHERE q.attempts > 0
ORDER BY q.dead_at IS NULL, q.last_failed_at DESC
LIMIT %(limit)s

-- name: retry
-- Put failing or dead rows back in line with their attempts reset (all of them, or the keys given).
UPDATE {queue} q
SET attempts = 0, last_error = NULL, first_failed_at = NULL, last_failed_at = NULL, dead_at = NULL,
    not_before = now(), queued_at = CASE WHEN q.dead_at IS NULL THEN q.queued_at ELSE now() END
WHERE q.attempts > 0 AND (%(all)s OR {q_key_text} = ANY(%(keys)s))
RETURNING {q_key_text}

-- name: pending
-- Keys waiting or in hand, counted up to %(cap)s (dead ones wait for no one; logged ones counted as logged).
SELECT (SELECT count(*) FROM (SELECT FROM {queue} WHERE dead_at IS NULL LIMIT %(cap)s) p)
     + (SELECT coalesce(sum(changed), 0) FROM {log})
