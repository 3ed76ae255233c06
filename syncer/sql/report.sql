-- name: status
-- One line of `syncer status`: rows, vectors, what is queued (dead rows apart), failures, lag.
SELECT
    (SELECT count(*) FROM {table}) AS rows,
    (SELECT count(*) FROM {store}) AS embedded,
    q.queued, q.failing, q.dead, q.oldest_seconds,
    (SELECT last_error FROM {queue} WHERE attempts > 0 ORDER BY last_failed_at DESC NULLS LAST LIMIT 1)
FROM (
    SELECT count(*) FILTER (WHERE dead_at IS NULL) AS queued,
           count(*) FILTER (WHERE dead_at IS NULL AND attempts > 0) AS failing,
           count(*) FILTER (WHERE dead_at IS NOT NULL) AS dead,
           extract(epoch FROM now() - min(queued_at) FILTER (WHERE dead_at IS NULL))::float8 AS oldest_seconds
    FROM {queue}
) q

-- name: queued
-- Rows waiting in a source's queue (the size of a progress display); dead rows wait for no one.
SELECT count(*) FROM {queue} WHERE dead_at IS NULL
