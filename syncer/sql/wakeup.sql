-- name: arm
-- Before a worker sleeps, on its LISTEN connection (direct, never through a transaction pooler). true: armed;
-- from now on writers NOTIFY, and every writer that logged a change without NOTIFY has committed.
SELECT pg_try_advisory_lock({wake_lock}, 0)

-- name: probe
-- Arming failed. true: writers hold the lock shared (in flight: drop it at once, look again shortly); false:
-- another worker is armed (its writers' NOTIFYs reach every listener).
SELECT pg_try_advisory_lock_shared({wake_lock}, 0)

-- name: unprobe
-- Drop the probe's shared lock.
SELECT pg_advisory_unlock_shared({wake_lock}, 0)

-- name: disarm
-- Woken, found work on the re-check, or stopping: writers stop notifying.
SELECT pg_advisory_unlock({wake_lock}, 0)
