"""The loop: drain the queues, then wait for a notification, the poll, or stop.

Each batch: claim under a lease (short transaction), embed with no transaction open, then
settle (second short transaction) on a writer thread while the next batch is claimed and embedded.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import psycopg

from . import embedding, queue, report, sources
from .database import Database
from .progress import Progress
from .providers import Provider, ProviderError, ProviderFatal
from .settings import Settings
from .wakeup import Wakeup, backoff

log = logging.getLogger(__name__)


class Worker:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        provider: Provider,
        source_list: list[sources.Source],
        progress: dict[str, Progress] | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.provider = provider
        self.sources = source_list
        self.progress = progress or {}
        self.wakeup = Wakeup(db, settings.poll_interval)
        self._stop = threading.Event()
        self._indexed: set[str] = set()
        self._failures = 0  # connection or provider failures in a row
        self.embedded = 0  # vectors written by this worker

    def stop(self) -> None:
        """Ask the loop to stop after the batch in hand (safe from a signal handler)."""
        self._stop.set()
        self.wakeup.event.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self, once: bool = False) -> None:
        """Follow changes until stopped; with ``once``, until nothing is ready, then return."""
        if not once:
            self.wakeup.start()
        try:
            while not self.stopping:
                try:
                    self._serve(once)
                    return
                except (psycopg.OperationalError, ProviderError) as exc:
                    self._failures += 1
                    delay = backoff(self._failures, base=1.0, cap=60.0)
                    log.warning("%s; retrying in %.1fs", str(exc).strip() or type(exc).__name__, delay)
                    self._stop.wait(delay)
        finally:
            self.wakeup.close()
            for bar in self.progress.values():
                bar.close()

    def _serve(self, once: bool) -> None:
        with (
            self.db.connect() as claim_conn,
            self.db.connect() as write_conn,
            ThreadPoolExecutor(1, thread_name_prefix="syncer-write") as writer,
        ):
            while not self.stopping:
                self.wakeup.event.clear()
                self.drain(claim_conn, write_conn, writer)
                self._failures = 0
                if once:
                    return
                self.wakeup.event.wait()

    def drain(self, claim_conn: psycopg.Connection, write_conn: psycopg.Connection, writer: ThreadPoolExecutor) -> int:
        """Process batches, one per source in turn, until none is ready; returns keys settled."""
        settled = 0
        pending: Future[int] | None = None
        try:
            while not self.stopping:
                claimed = 0
                for source in self.sources:
                    batch = self._claim(claim_conn, source)
                    if batch is None:
                        continue
                    claimed += len(batch.changes)
                    vectors, errors = self._embed(claim_conn, batch)
                    previous, pending = pending, None
                    settled += self._result(previous, claim_conn, batch)
                    pending = writer.submit(self._settle, write_conn, batch, vectors, errors)
                if not claimed:
                    break
        finally:
            if pending is not None:
                settled += pending.result()
        self._ensure_indexes(claim_conn)
        return settled

    def _result(self, pending: Future[int] | None, conn: psycopg.Connection, in_hand: queue.Batch) -> int:
        """The previous batch's settle; if it failed, give back the batch in hand before raising."""
        try:
            return pending.result() if pending is not None else 0
        except BaseException:
            with contextlib.suppress(psycopg.Error), conn.transaction():
                queue.release(conn, in_hand)
            raise

    def _claim(self, conn: psycopg.Connection, source: sources.Source) -> queue.Batch | None:
        if self.stopping:
            return None
        batch = queue.claim(conn, source, self.settings.batch_size, self.settings.lease_seconds)
        return batch if batch.changes else None

    def _embed(self, conn: psycopg.Connection, batch: queue.Batch) -> tuple[dict[int, np.ndarray], dict[int, str]]:
        todo, _, _ = batch.plan(self.provider.model_id)
        texts = [c.text for c in todo if c.text is not None]
        try:
            result = embedding.embed(self.provider, texts, [c.key for c in todo], self.settings.on_too_long)
        except (ProviderError, ProviderFatal):
            with conn.transaction():
                queue.release(conn, batch)  # not the rows' fault: give them back uncharged
            raise
        vectors = {todo[i].seq: v for i, v in result.vectors.items()}
        errors = {todo[i].seq: e for i, e in result.errors.items()}
        return vectors, errors

    def _settle(
        self, conn: psycopg.Connection, batch: queue.Batch, vectors: dict[int, np.ndarray], errors: dict[int, str]
    ) -> int:
        backoff_range = (self.settings.retry_base_seconds, self.settings.retry_max_seconds)
        try:
            outcome = queue.settle(conn, batch, self.provider.model_id, vectors, errors, backoff_range)
        except queue.StoreChanged:
            with conn.transaction():
                queue.release(conn, batch)  # for the workers that run the store's model
            raise
        self.embedded += outcome.stored
        log.debug("%s: %s", batch.source.name, outcome)
        bar = self.progress.get(batch.source.name)
        if bar is not None:
            bar.advance(len(outcome.done))
        return len(outcome.done)

    def _ensure_indexes(self, conn: psycopg.Connection) -> None:
        """Build indexes deferred during a large backfill, once that source's queue has drained."""
        for source in self.sources:
            if source.name not in self._indexed:
                with conn.transaction():
                    sources.ensure_index(conn, source)
                self._indexed.add(source.name)


def backlog_progress(db: Database, source_list: list[sources.Source]) -> dict[str, Progress]:
    """A progress display for each source that starts with work queued (its backfill, or a backlog)."""
    bars = {}
    with db.connect() as conn:
        for source in source_list:
            queued = report.queued(conn, source)  # not status(): that counts the whole table
            if queued:
                bars[source.name] = Progress(f"syncing {source.name}", queued)
    return bars
