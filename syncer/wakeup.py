"""When to look at the queue: on NOTIFY (a hint) or every poll interval (the guarantee)."""

from __future__ import annotations

import logging
import random
import threading

import psycopg
from apscheduler.schedulers.background import BackgroundScheduler

from .database import Database

log = logging.getLogger(__name__)

CHANNEL = "syncer"
NOTIFY_WAIT = 1.0  # seconds between checks of the closing flag while listening


def backoff(failures: int, base: float = 0.5, cap: float = 30.0) -> float:
    """Exponential backoff with full jitter for the ``failures``-th failure in a row."""
    return random.uniform(0, min(cap, base * 2 ** min(failures, 16)))


class Wakeup:
    """Sets ``event`` when a change may be waiting. A lost notification only delays a change."""

    def __init__(self, db: Database, poll_interval: float) -> None:
        self.db = db
        self.event = threading.Event()
        self.listening = threading.Event()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="syncer-listen", daemon=True)
        self._scheduler = BackgroundScheduler(daemon=True)
        self._scheduler.add_job(self.event.set, "interval", seconds=poll_interval, id="poll")

    def start(self) -> None:
        self._scheduler.start()
        if self.db.listen_url is None:
            log.info("no direct connection to LISTEN on (SYNCER_DATABASE_POOLED): polling only")
            return
        self._thread.start()

    def close(self) -> None:
        self._closed.set()
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        if self._thread.is_alive():
            self._thread.join(timeout=NOTIFY_WAIT * 5)

    def _listen(self) -> None:
        failures = 0
        while not self._closed.is_set():
            try:
                with self.db.connect(vector=False, url=self.db.listen_url) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    failures = 0
                    self.listening.set()
                    self.event.set()  # catch up on whatever arrived while we were not listening
                    while not self._closed.is_set():
                        for _ in conn.notifies(timeout=NOTIFY_WAIT):
                            self.event.set()
            except psycopg.OperationalError as exc:
                self.listening.clear()
                failures += 1
                delay = backoff(failures)
                log.warning("listen connection lost (%s); reconnecting in %.1fs", str(exc).strip(), delay)
                self._closed.wait(delay)
