"""The batches a worker holds: renewed while in hand, given back at once when the worker fails.

A lease that outlives its worker only delays other workers by its length, so leases are short
and renewed every third of their length on a connection of their own. A worker that loses its
connections (a restart of the database, a killed backend) gives its batches back as soon as it
reaches the database again, rather than letting them sit out the lease.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid

import psycopg

from . import queue
from .database import Database

log = logging.getLogger(__name__)


class Leases:
    def __init__(self, db: Database, lease_seconds: float, max_hold_seconds: float) -> None:
        self.db = db
        self.lease_seconds = lease_seconds
        self.max_hold_seconds = max_hold_seconds
        self._held: dict[uuid.UUID, queue.Batch] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._keep, name="syncer-leases", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._closed.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def hold(self, batch: queue.Batch) -> None:
        with self._lock:
            self._held[batch.token] = batch

    def done(self, batch: queue.Batch) -> None:
        with self._lock:
            self._held.pop(batch.token, None)

    def held(self) -> list[queue.Batch]:
        with self._lock:
            return list(self._held.values())

    def give_back(self) -> int:
        """Release every batch in hand (after a failure); kept for later if the database is away."""
        batches = self.held()
        if not batches:
            return 0
        released = 0
        try:
            with self.db.connect() as conn:
                for batch in batches:
                    released += queue.release(conn, batch)
                    self.done(batch)
        except psycopg.OperationalError as exc:
            log.warning("could not give back %d batches yet (%s); retrying on reconnect", len(batches), exc)
        if released:
            log.info("gave back %d rows of %d batches", released, len(batches))
        return released

    def _keep(self) -> None:
        conn: psycopg.Connection | None = None
        try:
            while not self._closed.wait(self.lease_seconds / 3):
                batches = [b for b in self.held() if self._renewable(b)]
                if not batches:
                    continue
                try:
                    conn = conn or self.db.connect()
                    for batch in batches:
                        queue.renew(conn, batch, self.lease_seconds)
                except psycopg.Error as exc:
                    log.warning("could not renew leases (%s); retrying in %.0fs", exc, self.lease_seconds / 3)
                    if conn is not None:
                        with contextlib.suppress(psycopg.Error):
                            conn.close()
                    conn = None
        finally:
            if conn is not None:
                conn.close()

    def _renewable(self, batch: queue.Batch) -> bool:
        held_for = time.monotonic() - batch.claimed_at
        if held_for <= self.max_hold_seconds:
            return True
        log.warning(
            "%s: a batch has been in hand for %.0fs (SYNCER_MAX_BATCH_SECONDS); its lease is left to run out",
            batch.source.name,
            held_for,
        )
        self.done(batch)
        return False
