"""When to look at the queue again: on NOTIFY (a hint) or every poll interval (the guarantee).

Writers send NOTIFY only while a worker sleeps armed, holding the wake lock (``fragments.WAKE_LOCK``)
on its LISTEN connection; otherwise they hold that lock shared until they commit. So, before it
sleeps, a worker arms, which succeeds only once every writer that skipped the NOTIFY has committed,
then looks once more for work, and sleeps only if there is none: no change is left waiting for the
poll, and concurrent writers never queue up on NOTIFY's commit lock.
"""

from __future__ import annotations

import contextlib
import logging
import random
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from apscheduler.schedulers.background import BackgroundScheduler
from psycopg import sql

from .database import Database
from .fragments import WAKE_LOCK
from .queries import query

log = logging.getLogger(__name__)

CHANNEL = "syncer"
RETRY_MIN, RETRY_MAX = 0.001, 0.1  # seconds: backoff while writers are in flight


def backoff(failures: int, base: float = 0.5, cap: float = 30.0) -> float:
    """Exponential backoff with full jitter for the ``failures``-th failure in a row."""
    return random.uniform(0, min(cap, base * 2 ** min(failures, 16)))


class Wakeup:
    """Sleeps a worker until a change may be waiting: a NOTIFY, the poll, or a stop (``poke``).

    A worker sleeps armed while nothing is ready: each poll then asks ``ready`` and sleeps on, armed,
    unless work came that no NOTIFY announced (a backoff ran out, a lease expired, a NOTIFY was lost).
    The poll and ``poke`` send a byte to a socket that the worker watches beside its LISTEN socket, so
    it sleeps in one select() with no timeout: no timer wakes an idle worker in between.
    """

    def __init__(self, db: Database, poll_interval: float, notify: bool = True) -> None:
        self.db = db
        self.notify = notify and db.listen_url is not None
        self.listening = threading.Event()
        self._poked = threading.Event()  # a stop: back to the loop, and never to sleep again
        self._polled = threading.Event()  # the poll: look for work
        self._retry = RETRY_MIN
        self._sender, self._receiver = socket.socketpair()  # closed with this object
        self._sender.setblocking(False)
        self._receiver.setblocking(False)
        self._scheduler = BackgroundScheduler(daemon=True)
        self._scheduler.add_job(self._poll, "interval", seconds=poll_interval, id="poll")

    def poke(self) -> None:
        """Wake the worker for good: every wait returns at once from now on (a stop; safe from a signal handler)."""
        self._poked.set()
        self._send()

    def clear(self) -> None:
        """Forget polls that came before now (the worker is about to look at the queue anyway); a poke stays."""
        self._polled.clear()
        self._receive()

    def _poll(self) -> None:
        self._polled.set()
        self._send()

    def _send(self) -> None:
        with contextlib.suppress(BlockingIOError):  # full of wake-ups already
            self._sender.send(b"\0")

    def _receive(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while self._receiver.recv(4096):
                pass

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
        """Return when a change may be waiting; ``ready`` looks for work (read-only) once armed, and at each poll."""
        if conn is None:
            self._wait(None, None)
            return
        while True:
            if self._one(conn, "arm"):
                self._retry = RETRY_MIN
                try:
                    while not ready(conn):
                        if not self._polled_only(conn):
                            return
                finally:
                    self._one(conn, "disarm")
                return
            if self._one(conn, "probe"):  # writers in flight: their changes are there once they commit
                self._one(conn, "unprobe")
                self._wait(conn, self._retry)
                self._retry = min(self._retry * 2, RETRY_MAX)
                return
            # another worker is armed: its writers' NOTIFYs reach us too; at each poll, try to arm (it may be gone)
            if not self._polled_only(conn) or ready(conn):
                return

    def _polled_only(self, conn: psycopg.Connection) -> bool:
        """Wait; whether it was only the poll that woke us (not a NOTIFY, nor a stop)."""
        self._wait(conn, None)
        if self._poked.is_set() or not self._polled.is_set():
            return False
        self._polled.clear()
        return True

    def _one(self, conn: psycopg.Connection, block: str) -> bool:
        row = conn.execute(query("wakeup", block, wake_lock=sql.Literal(WAKE_LOCK))).fetchone()
        return bool(row and row[0])

    def _wait(self, conn: psycopg.Connection | None, timeout: float | None) -> None:
        """Until a NOTIFY, the poll, a poke, or ``timeout`` seconds: in select() on the LISTEN socket (if any) and
        the wake-up socket (psycopg's own wait would wake ten times a second)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if conn is not None and any(True for _ in conn.notifies(timeout=0, stop_after=1)):
            return  # one that came in with an earlier answer
        watched: list[Any] = [self._receiver] if conn is None else [self._receiver, conn.fileno()]
        while not (self._poked.is_set() or self._polled.is_set()):
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return
            readable = select.select(watched, [], [], left)[0]
            if self._receiver in readable:
                self._receive()
            if (
                conn is not None
                and conn.fileno() in readable
                and any(True for _ in conn.notifies(timeout=0, stop_after=1))
            ):
                return
