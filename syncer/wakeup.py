"""When to look at the queue again: on NOTIFY (a hint) or every poll interval (the guarantee).

Writers send NOTIFY only while a worker sleeps armed, holding the wake lock (``fragments.WAKE_LOCK``)
on its LISTEN connection; otherwise they hold that lock shared until they commit. So, before it
sleeps, a worker arms, which succeeds only once every writer that skipped the NOTIFY has committed,
then looks once more for work, and sleeps only if there is none: no change is left waiting for the
poll, and concurrent writers never queue up on NOTIFY's commit lock.
"""

from __future__ import annotations

import logging
import random
import select
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg
from apscheduler.schedulers.background import BackgroundScheduler
from psycopg import sql

from .database import Database
from .fragments import WAKE_LOCK
from .queries import query

log = logging.getLogger(__name__)

CHANNEL = "syncer"
SLICE = 0.25  # seconds: how often a sleeping worker checks the poll and stop flags
RETRY_MIN, RETRY_MAX = 0.001, 0.1  # seconds: backoff while writers are in flight


def backoff(failures: int, base: float = 0.5, cap: float = 30.0) -> float:
    """Exponential backoff with full jitter for the ``failures``-th failure in a row."""
    return random.uniform(0, min(cap, base * 2 ** min(failures, 16)))


class Wakeup:
    """Sleeps a worker until a change may be waiting: a NOTIFY, the poll (``event``, also set to stop)."""

    def __init__(self, db: Database, poll_interval: float, notify: bool = True) -> None:
        self.db = db
        self.notify = notify and db.listen_url is not None
        self.event = threading.Event()
        self.listening = threading.Event()
        self._retry = RETRY_MIN
        self._scheduler = BackgroundScheduler(daemon=True)
        self._scheduler.add_job(self.event.set, "interval", seconds=poll_interval, id="poll")

    def start(self) -> None:
        self._scheduler.start()
        if self.db.listen_url is None:
            log.info("no direct connection to LISTEN on (SYNCER_DATABASE_POOLED): polling only")

    def close(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)

    @contextmanager
    def listener(self) -> Iterator[psycopg.Connection | None]:
        """The LISTEN connection (None: poll only); closing it releases the wake lock with it."""
        if not self.notify:
            yield None
            return
        with self.db.connect(vector=False, url=self.db.listen_url) as conn:
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
            self.listening.set()
            try:
                yield conn
            finally:
                self.listening.clear()

    def sleep(self, conn: psycopg.Connection | None, ready: Callable[[psycopg.Connection], bool]) -> None:
        """Return when a change may be waiting; ``ready`` looks for work (read-only) once armed."""
        if conn is None:
            self.event.wait()
            return
        if self._one(conn, "arm"):
            self._retry = RETRY_MIN
            try:
                if not ready(conn):
                    self._wait(conn, None)
            finally:
                self._one(conn, "disarm")
        elif self._one(conn, "probe"):  # writers in flight: their changes are there once they commit
            self._one(conn, "unprobe")
            self._wait(conn, self._retry)
            self._retry = min(self._retry * 2, RETRY_MAX)
        else:  # another worker is armed: its writers' NOTIFYs reach us too (and the poll, if it went away)
            self._wait(conn, None)

    def _one(self, conn: psycopg.Connection, block: str) -> bool:
        row = conn.execute(query("wakeup", block, wake_lock=sql.Literal(WAKE_LOCK))).fetchone()
        return bool(row and row[0])

    def _wait(self, conn: psycopg.Connection, timeout: float | None) -> None:
        """Until a NOTIFY, the poll or stop (``event``), or ``timeout`` seconds. The thread sleeps in select() on
        the connection's socket, slice by slice (psycopg's own wait would wake ten times a second)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if any(True for _ in conn.notifies(timeout=0, stop_after=1)):  # one that came in with an earlier answer
            return
        while not self.event.is_set():
            left = SLICE if deadline is None else min(SLICE, deadline - time.monotonic())
            if left <= 0:
                return
            readable = select.select([conn.fileno()], [], [], left)[0]
            if readable and any(True for _ in conn.notifies(timeout=0, stop_after=1)):
                return
