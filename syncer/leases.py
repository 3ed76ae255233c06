"""The batches a worker holds: renewed while in hand, given back at once when the worker fails.

A lease that outlives its worker only delays other workers by its length, so leases are short
and renewed every third of their length on a connection of their own. A worker that loses its
connections (a restart of the database, a killed backend) gives its batches back as soon as it
reaches the database again, rather than letting them sit out the lease; a claim whose answer was
lost is given back by its token. Keys a settle could not reach (an application transaction held
them) are given back a moment later, again and again until their lease would have run out.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from dataclasses import dataclass

import psycopg

from . import queue
from .database import Database
from .sources import Source

log = logging.getLogger(__name__)

LINGER_TICK = 1.0  # seconds between attempts to give back keys a settle could not reach


@dataclass(frozen=True)
class Claim:
    """A claim under way: its token is known before its keys are."""

    source: Source
    token: uuid.UUID


class Leases:
    def __init__(self, db: Database, lease_seconds: float, max_hold_seconds: float) -> None:
        self.db = db
        self.lease_seconds = lease_seconds
        self.max_hold_seconds = max_hold_seconds
        self._held: dict[uuid.UUID, queue.Batch | Claim] = {}
        self._lingering: dict[uuid.UUID, tuple[queue.Batch, float]] = {}
        self._settling: set[uuid.UUID] = set()
        self._lock = threading.Lock()
        self._renewing = threading.Lock()  # held while a renewal round has rows of the held batches locked
        self._closed = threading.Event()
        self._tick = threading.Event()  # wakes the keeper early: closing, or keys to give back
        self._thread = threading.Thread(target=self._keep, name="syncer-leases", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._closed.set()
        self._tick.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def expect(self, source: Source, token: uuid.UUID) -> None:
        """A claim under ``token`` is about to be made."""
        with self._lock:
            self._held[token] = Claim(source, token)

    def hold(self, batch: queue.Batch) -> None:
        with self._lock:
            self._held[batch.token] = batch

    def settling(self, token: uuid.UUID) -> None:
        """The batch is about to settle: no renewal touches its keys from now on (one in flight is waited for),
        for the settle skips keys whose rows are locked, and would take a renewal's locks for another's."""
        with self._renewing, self._lock:
            self._settling.add(token)

    def done(self, token: uuid.UUID) -> None:
        with self._lock:
            self._held.pop(token, None)
            self._settling.discard(token)

    def linger(self, batch: queue.Batch) -> None:
        """Some of the batch's keys were out of reach when it settled: give them back soon."""
        with self._lock:
            self._lingering[batch.token] = (batch, time.monotonic())
        self._tick.set()

    def held(self) -> list[queue.Batch | Claim]:
        with self._lock:
            return list(self._held.values())

    def give_back(self) -> int:
        """Release everything in hand (after a failure); kept for later if the database is away."""
        held = self.held()
        if not held:
            return 0
        released = 0
        try:
            with self.db.connect() as conn:
                for item in held:
                    if isinstance(item, Claim):
                        released += queue.release_token(conn, item.source, item.token)
                    else:
                        released += queue.release(conn, item)
                    self.done(item.token)
        except psycopg.OperationalError as exc:
            log.warning("could not give back %d batches yet (%s); retrying on reconnect", len(held), exc)
        if released:
            log.info("gave back %d rows of %d batches", released, len(held))
        return released

    def _keep(self) -> None:
        conn: psycopg.Connection | None = None
        renewed = time.monotonic()
        try:
            while True:
                self._tick.wait(LINGER_TICK if self._lingering else self.lease_seconds / 3)
                self._tick.clear()
                if self._closed.is_set():
                    return
                try:
                    if time.monotonic() - renewed >= self.lease_seconds / 3:
                        conn = self._renew(conn)
                        renewed = time.monotonic()
                    conn = self._release_lingering(conn)
                except psycopg.Error as exc:
                    log.warning("could not renew or release leases (%s); trying again soon", exc)
                    if conn is not None:
                        with contextlib.suppress(psycopg.Error):
                            conn.close()
                    conn = None
        finally:
            if conn is not None:
                conn.close()

    def _renew(self, conn: psycopg.Connection | None) -> psycopg.Connection | None:
        with self._renewing:
            with self._lock:
                held = [b for b in self._held.values() if isinstance(b, queue.Batch) and b.token not in self._settling]
            batches = [b for b in held if self._renewable(b)]
            if batches:
                conn = conn or self.db.connect()
                for batch in batches:
                    queue.renew(conn, batch, self.lease_seconds)
        return conn

    def _release_lingering(self, conn: psycopg.Connection | None) -> psycopg.Connection | None:
        with self._lock:
            lingering = list(self._lingering.values())
        for batch, since in lingering:
            conn = conn or self.db.connect()
            queue.release(conn, batch)
            if time.monotonic() - since > self.lease_seconds:  # their lease has run out by now anyway
                with self._lock:
                    self._lingering.pop(batch.token, None)
        return conn

    def _renewable(self, batch: queue.Batch) -> bool:
        held_for = time.monotonic() - batch.claimed_at
        if held_for <= self.max_hold_seconds:
            return True
        log.warning(
            "%s: a batch has been in hand for %.0fs (SYNCER_MAX_BATCH_SECONDS); its lease is left to run out",
            batch.source.name,
            held_for,
        )
        self.done(batch.token)
        return False
