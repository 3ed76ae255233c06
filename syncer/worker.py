"""The loop: drain the queues, then sleep until a notification, the poll, or stop (``wakeup``).

Each batch: claim under a lease (short transaction), embed with no transaction open, then
settle (second short transaction) on a writer thread while the next batch is claimed and embedded.
Every batch in hand is held by ``Leases``: renewed while it is worked on, and given back at once
whatever the failure, from one place (``run``).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Literal

import psycopg

from . import chunking, embedding, metrics, queue, report, tables
from .database import Database, transaction
from .errors import ProviderError
from .health import Health
from .indexing import Indexing
from .lanes import Lanes
from .leases import Leases
from .progress import Progress
from .providers import Provider
from .settings import Settings
from .sources import Source
from .wakeup import Wakeup, backoff

log = logging.getLogger(__name__)

RECONNECT_BASE, RECONNECT_CAP = 1.0, 60.0  # seconds: backoff after a lost database or a failing provider
LINGER_BELOW = 8  # a pass that claimed fewer than 1/8 of a batch lingers before the next


@dataclass(frozen=True)
class WorkerOptions:
    batch_size: int = 512
    batch_bytes: int = 8_000_000
    lease_seconds: float = 60.0
    max_batch_seconds: float = 1800.0
    poll_interval: float = 5.0
    linger_seconds: float = 0.05
    notify: bool = True  # sleep armed on a LISTEN connection (False: poll only)
    lock_timeout: float = 2.0
    on_too_long: Literal["truncate", "error"] = "truncate"
    failures: queue.Failures = queue.Failures(10.0, 3600.0, 10)
    provider_name: str = "provider"  # its label in metrics
    indexing: Indexing = Indexing()

    @classmethod
    def from_settings(cls, settings: Settings) -> WorkerOptions:
        return cls(
            batch_size=settings.batch_size,
            batch_bytes=settings.batch_bytes,
            lease_seconds=settings.lease_seconds,
            max_batch_seconds=settings.max_batch_seconds,
            poll_interval=settings.poll_interval,
            linger_seconds=settings.linger_seconds,
            notify=settings.notify,
            lock_timeout=settings.lock_timeout,
            on_too_long=settings.on_too_long,
            failures=queue.Failures(settings.retry_base_seconds, settings.retry_max_seconds, settings.max_attempts),
            provider_name=settings.provider,
            indexing=Indexing.from_settings(settings),
        )


class Worker:
    def __init__(
        self,
        db: Database,
        provider: Provider,
        source_list: list[Source],
        options: WorkerOptions,
        progress: dict[str, Progress] | None = None,
        health: Health | None = None,
    ) -> None:
        self.db = db
        self.provider = provider
        self.sources = source_list
        self.options = options
        self.progress = progress or {}
        self.health = health or Health(options.max_batch_seconds)
        self.chunkers = {source.name: chunking.chunker(source.config, provider) for source in source_list}
        self.wakeup = Wakeup(db, options.poll_interval, options.notify)
        self.leases = Leases(db, options.lease_seconds, options.max_batch_seconds)
        self._stop = threading.Event()
        names = {source.name for source in source_list}
        never = options.indexing.threshold(provider.dimensions) is None  # pgvector cannot index such vectors
        self._indexed = names if never else set()  # sources whose store has its index (or never will)
        self._unlooked = set() if never else set(names)  # stores written since a look at their index
        self._next_look: dict[str, float] = {}  # no look at a store before (time.monotonic()): it counts the store
        self.lanes = Lanes()
        self._failures = 0  # connection or provider failures in a row
        self.embedded = 0  # vectors written by this worker

    def stop(self) -> None:
        """Ask the loop to stop after the batch in hand (safe from a signal handler)."""
        self._stop.set()
        self.wakeup.poke()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self, once: bool = False) -> None:
        """Follow changes until stopped; with ``once``, until nothing is ready, then return."""
        if not once:
            self.wakeup.start()
        self.leases.start()
        try:
            while not self.stopping:
                try:
                    self._serve(once)
                    return
                except (psycopg.OperationalError, ProviderError) as exc:
                    self.health.waiting()  # backing off is no sign of a stuck loop
                    self.leases.give_back()
                    self._failures += 1
                    delay = backoff(self._failures, base=RECONNECT_BASE, cap=RECONNECT_CAP)
                    log.warning("%s; retrying in %.1fs", str(exc).strip() or type(exc).__name__, delay)
                    self._stop.wait(delay)
                except BaseException:
                    self.leases.give_back()
                    raise
        finally:
            self.leases.close()
            self.wakeup.close()
            for bar in self.progress.values():
                bar.close()

    def _serve(self, once: bool) -> None:
        with (
            self.db.connect() as claim_conn,
            self.db.connect() as write_conn,
            ThreadPoolExecutor(1, thread_name_prefix="syncer-write") as writer,
            nullcontext(None) if once else self.wakeup.listener() as listen_conn,
        ):
            self.leases.give_back()  # batches left in hand when the last connection broke
            while not self.stopping:
                self.wakeup.clear()
                self.drain(claim_conn, write_conn, writer, 0.0 if once else self.options.linger_seconds)
                self._failures = 0
                if once:
                    self._ensure_indexes(claim_conn, final=True)
                    return
                self.health.waiting()
                self.wakeup.sleep(listen_conn, self._ready)

    def _ready(self, conn: psycopg.Connection) -> bool:
        """Whether to drain: a key is ready, or a store written since the last look is due one."""
        return self._look_due() or any(queue.ready(conn, source) for source in self.sources)

    def drain(
        self,
        claim_conn: psycopg.Connection,
        write_conn: psycopg.Connection,
        writer: ThreadPoolExecutor,
        linger: float = 0.0,
    ) -> int:
        """Process batches, each source's live edits then its bulk work in turn (``Lanes``), until none is ready;
        returns keys settled. An edit waits for at most the bulk batch in hand. After a pass that found only a
        few keys, wait ``linger`` seconds: a steady trickle of edits then goes in a few larger batches, not in a
        claim and a settle per edit. Stores that need their index get it after the drain, or within a poll
        interval while a stream of edits keeps it going."""
        settled, began = 0, time.monotonic()
        pending: Future[int] | None = None
        try:
            while not self.stopping:
                claimed = 0
                for source in self.sources:
                    for lane in self.lanes.order():
                        batch = self._claim(claim_conn, source, lane)
                        if batch is None:
                            continue
                        claimed += len(batch)
                        started = time.monotonic()
                        vectors, errors = self._embed(batch)
                        self.lanes.observe(lane, time.monotonic() - started, len(batch))
                        if pending is not None:
                            settled, pending = settled + pending.result(), None
                        pending = writer.submit(self._settle, write_conn, batch, vectors, errors)
                if not claimed:
                    break
                if time.monotonic() - began >= self.options.poll_interval and self._look_due():  # a long drain
                    if pending is not None:  # an index build would hold up our own settle
                        settled, pending = settled + pending.result(), None
                    self._ensure_indexes(claim_conn)
                if claimed < self.options.batch_size // LINGER_BELOW:
                    self._stop.wait(linger)
        finally:
            if pending is not None:
                settled += pending.result()
        self._ensure_indexes(claim_conn)
        return settled

    def _claim(self, conn: psycopg.Connection, source: Source, lane: queue.Lane) -> queue.Batch | None:
        if self.stopping:
            return None
        self.health.working()
        o = self.options
        token = uuid.uuid4()
        self.leases.expect(source, token)  # known before the claim: a claim whose answer is lost is given back
        model, limit = self.provider.model_id, self.lanes.limit(lane, o.batch_size)
        batch = queue.claim(conn, source, model, limit, o.batch_bytes, o.lease_seconds, token, lane=lane)
        if not len(batch):
            self.leases.done(token)
            return None
        self.leases.hold(batch)
        return batch

    def _embed(self, batch: queue.Batch) -> tuple[dict[int, list[queue.Piece]], dict[int, str]]:
        """Each key's chunks embedded, or the key's error (one chunk's error is its row's)."""
        split = self.chunkers[batch.source.name]
        texts, labels, counted, owners = [], [], [], []
        for change in batch.embed:
            assert change.text is not None  # planned: rows with no text are unstored, not embedded
            chunks = split.split(change.text)
            for number, chunk in enumerate(chunks):
                texts.append(change.text if chunk.text is None else chunk.text)
                labels.append(change.key if len(chunks) == 1 else f"{change.key} chunk {number}")
                counted.append(chunk.tokens)
                owners.append((change.seq, number, chunk))
        o = self.options
        result = embedding.embed(self.provider, texts, labels, o.on_too_long, o.provider_name, counted)
        errors: dict[int, str] = {}
        vectors: dict[int, list[queue.Piece]] = {}
        for position, (seq, number, chunk) in enumerate(owners):
            if position in result.errors:
                errors.setdefault(
                    seq, result.errors[position] if number == 0 else f"chunk {number}: {result.errors[position]}"
                )
            else:
                piece = queue.Piece(number, chunk.start, chunk.end, chunk.text, result.vectors[position])
                vectors.setdefault(seq, []).append(piece)
        return {seq: pieces for seq, pieces in vectors.items() if seq not in errors}, errors

    def _settle(
        self,
        conn: psycopg.Connection,
        batch: queue.Batch,
        vectors: dict[int, list[queue.Piece]],
        errors: dict[int, str],
    ) -> int:
        o = self.options
        self.leases.settling(batch.token)
        outcome = queue.settle(conn, batch, self.provider.model_id, vectors, errors, o.failures, o.lock_timeout)
        self.leases.done(batch.token)
        if outcome.unreached:
            self.leases.linger(batch.only(set(outcome.unreached)))
        self.embedded += outcome.stored
        if outcome.stored and batch.source.name not in self._indexed:
            self._unlooked.add(batch.source.name)
        metrics.settled(batch.source.name, outcome.counts(), outcome.ages)
        extra = {"source": batch.source.name, "batch": len(batch)}
        log.debug("%s: settled %s", batch.source.name, outcome.counts(), extra=extra)
        bar = self.progress.get(batch.source.name)
        if bar is not None:
            bar.advance(outcome.done)
        return outcome.settled

    def _look_due(self) -> bool:
        """Whether a store written since its last look may be looked at again (a look that found it too small, or
        bulk work in hand, comes back a poll interval later; through the poll, if nothing else drains)."""
        now = time.monotonic()
        return any(now >= self._next_look.get(name, 0.0) for name in self._unlooked)

    def _ensure_indexes(self, conn: psycopg.Connection, final: bool = False) -> None:
        """Look at the stores written since their last look, and build the indexes that are due
        (``Indexing.due``) once no bulk work of their source is ready or in hand (any worker's: a backfill's
        build waits for its end). ``final``: the last look of ``run --once``, taken whenever a look was due."""
        now = time.monotonic()
        for source in self.sources:
            name = source.name
            if name not in self._unlooked or (now < self._next_look.get(name, 0.0) and not final):
                continue
            seen = self._look(conn, source)
            if seen == "indexed":
                self._indexed.add(name)
            else:
                self._next_look[name] = now + self.options.poll_interval
            if seen != "wait":  # a store not due is looked at again once written again
                self._unlooked.discard(name)

    def _look(self, conn: psycopg.Connection, source: Source) -> Literal["indexed", "not due", "wait"]:
        """One look at a store's index: it has one (built now, maybe), it is not due one, or the look is to be
        taken again (bulk work in hand, or another worker's build, which may not finish)."""
        indexing = self.options.indexing
        with transaction(conn):
            if queue.bulk_queued(conn, source):
                return "wait"
            if tables.indexed(conn, source):
                return "indexed"
            if not indexing.due(conn, source, self.provider.dimensions):
                return "not due"
            return "indexed" if indexing.build(conn, source) else "wait"


def backlog_progress(db: Database, source_list: list[Source]) -> dict[str, Progress]:
    """A progress display for each source that starts with work queued (its backfill, or a backlog)."""
    bars = {}
    with db.connect() as conn:
        for source in source_list:
            queued = report.queued(conn, source)  # not status(): that counts the whole table
            if queued:
                bars[source.name] = Progress(f"syncing {source.name}", queued)
    return bars
