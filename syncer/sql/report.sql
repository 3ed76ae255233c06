-- name: status
-- One line of `syncer status`: rows, vectors, queue depth, failures, lag.
SELECT
    (SELECT count(*) FROM {table}) AS rows,
    (SELECT count(*) FROM {store}) AS embedded,
    (SELECT count(*) FROM {queue}) AS queued,
    (SELECT count(*) FROM {queue} WHERE attempts > 0) AS failed,
    (SELECT extract(epoch FROM now() - min(queued_at))::float8 FROM {queue}) AS oldest_seconds,
    (SELECT last_error FROM {queue} WHERE attempts > 0 ORDER BY seq DESC LIMIT 1) AS last_error

-- name: queued
-- Rows waiting in a source's queue (the size of a progress display).
SELECT count(*) FROM {queue}
