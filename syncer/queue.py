"""A source's queue: enqueue, claim under a lease, renew, settle (store, unstore, ack, fail), release, retry.

Every write of a batch is fenced: it touches only queue rows that still carry the batch's lease
token and the seq they had when claimed, so a key changed meanwhile, or taken over after a lost
lease, is never written with stale work.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, fields, replace
from datetime import datetime
from typing import Any, Literal

import numpy as np
import psycopg
from psycopg import sql

from . import fragments, registry
from .database import transaction
from .errors import ConfigError
from .queries import query
from .sources import Source
from .tables import MODEL_CONSTRAINT

log = logging.getLogger(__name__)

# Which ready keys a claim takes: changes the triggers captured (live), a backfill, reconcile or adoption (bulk),
# or live ones first with bulk ones filling the rest (both; bulk work gets at least 1/BULK_SHARE of the claim).
Lane = Literal["live", "bulk", "both"]
BULK_SHARE = 10
SETTLE_ROWS = 64  # keys per settle transaction: what an application writer may wait for, at most
EXPAND_ROWS = 1_000  # logged statements moved into the queue per claim
BATCH_ROWS = 10_000  # rows per keyset batch of a backfill or reconcile: short transactions for the writers
WANTED = {  # a batch row (b) is queued when ...
    "missing": sql.SQL("b.text IS NOT NULL AND e.content_hash IS NULL"),  # it has text and no vector
    # its vector is missing, or not of its text, or there though it has no text (NULL is distinct from a hash)
    "stale": sql.SQL("e.content_hash IS DISTINCT FROM sha256(convert_to(b.text, 'UTF8'))"),
    "all": sql.SQL("b.text IS NOT NULL OR e.content_hash IS NOT NULL"),  # every row with text or a vector
}
# A key already queued stays as it is; with ``revive``, a dead one starts afresh (its text has changed); with
# "all", every one starts afresh and makes its vectors again (its text is the same, its chunks are not).
KEEP = sql.SQL("ON CONFLICT DO NOTHING")
AFRESH = (
    "attempts = 0, last_error = NULL, first_failed_at = NULL, last_failed_at = NULL, dead_at = NULL, "
    "not_before = now(), queued_at = CASE WHEN q.dead_at IS NULL THEN q.queued_at ELSE now() END"
)
REVIVE = sql.SQL("ON CONFLICT ({keys}) DO UPDATE SET " + AFRESH + " WHERE q.dead_at IS NOT NULL")
REFRESH = sql.SQL("ON CONFLICT ({keys}) DO UPDATE SET refresh = true, " + AFRESH)


@dataclass(frozen=True)
class Change:
    """A claimed key: its queue position, current text (None: nothing to embed) and what is stored."""

    seq: int
    key: str  # the row's key as text, for messages
    text: str | None
    hash: bytes | None
    stored_hash: bytes | None
    stored_model: str | None
    refresh: bool = False  # make its vectors again, though its text is what is stored


@dataclass(frozen=True)
class Batch:
    """Claimed keys, planned once: what to embed, what to unstore, what is already stored as it is."""

    source: Source
    token: uuid.UUID
    embed: tuple[Change, ...]
    unstore: tuple[Change, ...]
    unchanged: tuple[Change, ...]
    claimed_at: float  # time.monotonic()

    @property
    def seqs(self) -> list[int]:
        return [c.seq for c in (*self.embed, *self.unstore, *self.unchanged)]

    def __len__(self) -> int:
        return len(self.embed) + len(self.unstore) + len(self.unchanged)

    def only(self, seqs: set[int]) -> Batch:
        """The part of the batch with these seqs (same token)."""
        return replace(
            self,
            embed=tuple(c for c in self.embed if c.seq in seqs),
            unstore=tuple(c for c in self.unstore if c.seq in seqs),
            unchanged=tuple(c for c in self.unchanged if c.seq in seqs),
        )


@dataclass(frozen=True)
class Piece:
    """One vector of a key: its chunk number and offsets, the chunk's text (None: the whole text)."""

    chunk: int
    start: int
    end: int
    text: str | None
    vector: np.ndarray


@dataclass(frozen=True)
class Failures:
    """How rows the provider rejects are retried: exponential backoff, then dead."""

    base_seconds: float
    max_seconds: float
    max_attempts: int


@dataclass(frozen=True)
class Outcome:
    """What a settle did; ``released`` keys changed meanwhile (or were not reached) and come back."""

    stored: int = 0
    removed: int = 0
    unchanged: int = 0
    failed: int = 0
    dead: int = 0
    released: int = 0
    taken: int = 0  # keys whose lease ran out and another worker took
    ages: tuple[float, ...] = ()  # seconds since each stored, removed or unchanged key was queued
    unreached: tuple[int, ...] = ()  # seqs neither settled nor given back: changed, taken, or held by another

    def __add__(self, other: Outcome) -> Outcome:
        return Outcome(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    @property
    def settled(self) -> int:
        return self.stored + self.removed + self.unchanged + self.failed + self.dead

    @property
    def done(self) -> int:
        """Keys off the queue, or given up on (a failed key comes back)."""
        return self.stored + self.removed + self.unchanged + self.dead

    def counts(self) -> dict[str, int]:
        outcomes = ("stored", "removed", "unchanged", "failed", "dead")
        return {name: getattr(self, name) for name in outcomes}


def plan(source: Source, token: uuid.UUID, changes: list[Change], model_id: str) -> Batch:
    embed, unstore, unchanged = [], [], []
    for change in changes:
        if change.text is None:
            unstore.append(change)
        elif change.hash == change.stored_hash and change.stored_model == model_id and not change.refresh:
            unchanged.append(change)
        else:
            embed.append(change)
    return Batch(source, token, tuple(embed), tuple(unstore), tuple(unchanged), time.monotonic())


def claim(
    conn: psycopg.Connection,
    source: Source,
    model_id: str,
    limit: int,
    max_bytes: int,
    lease_seconds: float,
    token: uuid.UUID | None = None,
    *,
    lane: Lane,
) -> Batch:
    """Lease up to ``limit`` ready keys of ``lane`` (and ``max_bytes`` of text, at least one key) in one short
    transaction, the source's logged changes moved into the queue first (one commit, not two, before the claim)."""
    token = token or uuid.uuid4()
    share = max(1, limit // BULK_SHARE) if lane == "both" else 0
    live = 0 if lane == "bulk" else limit - share
    bulk = 0 if lane == "live" else limit
    params = {"live": live, "bulk": bulk, "share": share, "bytes": max_bytes, "token": token, "lease": lease_seconds}
    with transaction(conn):
        if not source.shadow:  # a re-embed's queue is filled by the re-embed, not by the triggers
            conn.execute(query("queue", "expand", **fragments.parts(source)), {"limit": EXPAND_ROWS})
        rows = conn.execute(query("queue", "claim", **fragments.parts(source)), params).fetchall()
    return plan(source, token, [Change(*row) for row in rows], model_id)


def renew(conn: psycopg.Connection, batch: Batch, lease_seconds: float) -> int:
    """Extend the lease of the batch's keys that are still ours; returns how many."""
    params = {"seqs": batch.seqs, "token": batch.token, "lease": lease_seconds}
    with transaction(conn):
        return len(conn.execute(query("queue", "renew", **fragments.parts(batch.source)), params).fetchall())


def settle(
    conn: psycopg.Connection,
    batch: Batch,
    model_id: str,
    vectors: dict[int, list[Piece]],
    errors: dict[int, str],
    failures: Failures,
    lock_timeout: float = 2.0,
) -> Outcome:
    """Write what the batch produced, keeping only what is still ours, in short transactions of
    ``SETTLE_ROWS`` keys: an application writer that touches a key being settled waits at most for
    one of them (inserting into an HNSW index costs milliseconds a row), and never longer than
    ``lock_timeout`` for a lock syncer waits on (an index being built, say).

    ``vectors`` (each key's chunks) and ``errors`` are keyed by seq. Raises ``StoreChanged`` if this worker's model
    or text definition is no longer the applied one (nothing more is written then).
    """
    total = Outcome()
    for part in _parts(batch, SETTLE_ROWS):
        total = total + _settle(conn, part, model_id, vectors, errors, failures, lock_timeout)
    return total


def _parts(batch: Batch, rows: int) -> list[Batch]:
    changes = [*batch.embed, *batch.unstore, *batch.unchanged]
    return [batch.only({c.seq for c in changes[i : i + rows]}) for i in range(0, len(changes), rows)]


def _settle(
    conn: psycopg.Connection,
    batch: Batch,
    model_id: str,
    vectors: dict[int, list[Piece]],
    errors: dict[int, str],
    failures: Failures,
    lock_timeout: float,
) -> Outcome:
    pieces = [(c, p) for c in batch.embed for p in vectors.get(c.seq, [])]
    failed = {c.seq: errors[c.seq] for c in batch.embed if c.seq in errors}
    arms: list[tuple[str, list[int], dict[str, Any]]] = [
        ("store", [c.seq for c, _ in pieces], {
            "hashes": [c.hash for c, _ in pieces], "chunks": [p.chunk for _, p in pieces],
            "starts": [p.start for _, p in pieces], "ends": [p.end for _, p in pieces],
            "texts": [p.text for _, p in pieces], "embeddings": [p.vector for _, p in pieces], "model": model_id,
        }),
        ("unstore", [c.seq for c in batch.unstore], {}),
        ("ack", [c.seq for c in batch.unchanged], {}),
        ("fail", list(failed), {
            "errors": list(failed.values()), "base": failures.base_seconds, "max": failures.max_seconds,
            "max_attempts": failures.max_attempts,
        }),
    ]  # fmt: skip
    done: dict[str, list[tuple[Any, ...]]] = {}
    with transaction(conn):
        conn.execute("SELECT set_config('lock_timeout', %s, true)", [f"{int(lock_timeout * 1000)}ms"])
        registry.fence(conn, batch.source, model_id)
        for block, seqs, params in arms:
            done[block] = _run(conn, batch, block, seqs, params)
        settled = {row[0] for rows in done.values() for row in rows}
        rest = [seq for seq in batch.seqs if seq not in settled]
        released = {row[0] for row in _run(conn, batch, "release", rest, {})}
        unreached = tuple(seq for seq in rest if seq not in released)
        taken = _taken(conn, batch, list(unreached))
    dead = sum(1 for _, is_dead in done["fail"] if is_dead)
    ages = tuple(row[1] for block in ("store", "unstore", "ack") for row in done[block])
    counts = len(done["store"]), len(done["unstore"]), len(done["ack"]), len(done["fail"]) - dead, dead
    return Outcome(*counts, len(released), taken, ages, unreached)


def _run(
    conn: psycopg.Connection, batch: Batch, block: str, seqs: list[int], params: dict[str, Any]
) -> list[tuple[Any, ...]]:
    """One arm of a settle on the keys ``seqs`` still ours; returns a row (seq first) per key it settled."""
    if not seqs:
        return []
    statement = query("queue", block, **fragments.parts(batch.source))
    try:
        return conn.execute(statement, {"seqs": seqs, "token": batch.token} | params).fetchall()
    except psycopg.errors.CheckViolation as exc:
        if exc.diag.constraint_name == MODEL_CONSTRAINT:  # the registry (held by the fence) says it is ours
            raise ConfigError(
                f"{batch.source.qualified_store} refuses {params.get('model')} vectors ({MODEL_CONSTRAINT}), "
                "though syncer.sources says it holds them: the store was altered outside syncer"
            ) from exc
        raise


def _taken(conn: psycopg.Connection, batch: Batch, seqs: list[int]) -> int:
    """Keys unchanged since the claim that are no longer ours (their lease expired): warn, they were redone."""
    if not seqs:
        return 0
    row = conn.execute(query("queue", "taken", **fragments.parts(batch.source)), {"seqs": seqs, "token": batch.token})
    taken = int(row.fetchone()[0])  # type: ignore[index]
    if taken:
        log.warning(
            "%s: the lease on %d rows ran out after %.0fs and another worker took them; their work here was discarded",
            batch.source.name,
            taken,
            time.monotonic() - batch.claimed_at,
        )
    return taken


def release(conn: psycopg.Connection, batch: Batch) -> int:
    """Give back the batch's keys that are still ours (claimable again at once)."""
    with transaction(conn):
        return len(_run(conn, batch, "release", batch.seqs, {}))


def release_token(conn: psycopg.Connection, source: Source, token: uuid.UUID) -> int:
    """Give back every key leased under ``token``: a claim whose answer was lost, its keys unknown."""
    with transaction(conn):
        statement = query("queue", "release_token", **fragments.parts(source))
        return len(conn.execute(statement, {"token": token}).fetchall())


def ready(conn: psycopg.Connection, source: Source) -> bool:
    """Whether changes are logged or keys are ready to claim."""
    row = conn.execute(query("queue", "ready", **fragments.parts(source))).fetchone()
    return bool(row and row[0])


def bulk_queued(conn: psycopg.Connection, source: Source) -> bool:
    """Whether any bulk key (a backfill, reconcile or re-embed) is ready or in hand (backing off or dead: no)."""
    row = conn.execute(query("queue", "bulk_queued", queue=source.queue)).fetchone()
    return bool(row and row[0])


def pending(conn: psycopg.Connection, source: Source, cap: int) -> int:
    """Keys waiting or in hand, counted up to ``cap``."""
    row = conn.execute(query("queue", "pending", **fragments.parts(source)), {"cap": cap}).fetchone()
    return int(row[0]) if row else 0


def enqueue(
    conn: psycopg.Connection,
    source: Source,
    kind: Literal["missing", "stale", "all"],
    *,
    batched: bool = True,
    revive: bool = False,
) -> int:
    """Queue the rows whose vector is missing (the backfill), or missing or stale and then the orphaned
    vectors (reconcile: converges after changes that bypassed the triggers); returns rows queued.

    ``batched``: in keyset batches of ``BATCH_ROWS`` that each commit (unless ``conn`` is in a
    transaction already); else in one statement. ``revive``: dead keys among them start afresh.
    """
    rows = BATCH_ROWS if batched else None
    keys = fragments.key_list(source)
    conflict: dict[str, sql.Composable] = {
        "on_conflict": REFRESH.format(keys=keys) if kind == "all" else REVIVE.format(keys=keys) if revive else KEEP,
        "refresh": sql.Literal(kind == "all"),
    }
    queued = _keyset(conn, source, "enqueue_rows", "t", {"wanted_test": WANTED[kind], **conflict}, rows)
    if kind != "missing":
        queued += _keyset(conn, source, "enqueue_orphans", "e", conflict, rows)
    return queued


def _keyset(
    conn: psycopg.Connection,
    source: Source,
    block: str,
    alias: str,
    extra: dict[str, sql.Composable],
    batch_rows: int | None,
) -> int:
    queued, last = 0, None
    while True:
        after = fragments.keys_after(source, alias, last)
        statement = query("queue", block, **fragments.parts(source), **extra, after=after)
        with transaction(conn):
            row = conn.execute(statement, {"limit": batch_rows}).fetchone()
        if row is None:
            return queued
        queued, last = queued + row[0], tuple(row[1:])


@dataclass(frozen=True)
class Failure:
    key: str
    attempts: int
    state: str  # dead, backoff, ready (retry due) or leased (being retried)
    first_failed: datetime | None
    last_failed: datetime | None
    error: str | None


def failures(conn: psycopg.Connection, source: Source, limit: int) -> list[Failure]:
    """Failing and dead rows of a source, dead first, then the latest failures."""
    with transaction(conn):
        rows = conn.execute(query("queue", "failures", **fragments.parts(source)), {"limit": limit}).fetchall()
    return [Failure(*row) for row in rows]


def retry(conn: psycopg.Connection, source: Source, keys: list[str] | None) -> list[str]:
    """Put failing or dead rows back in line with attempts reset (``keys`` None: all); returns the keys."""
    params = {"all": keys is None, "keys": keys or []}
    with transaction(conn):
        return [row[0] for row in conn.execute(query("queue", "retry", **fragments.parts(source)), params)]
