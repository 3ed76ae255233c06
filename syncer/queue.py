"""Claim a batch of changed keys under a lease, and settle it: store, unstore, ack, fail, release."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psycopg
from psycopg import sql

from .queries import query
from .sources import Source


class StoreChanged(Exception):
    """The store no longer takes this model's vectors (it was re-embedded): this worker must stop."""


@dataclass(frozen=True)
class Change:
    """A claimed key: its queue position, current text (None: nothing to embed) and what is stored."""

    seq: int
    key: str  # the row's key as text, for messages
    text: str | None
    hash: bytes | None
    stored_hash: bytes | None
    stored_model: str | None


@dataclass
class Batch:
    source: Source
    token: uuid.UUID
    changes: list[Change]

    @property
    def seqs(self) -> list[int]:
        return [c.seq for c in self.changes]

    def plan(self, model_id: str) -> tuple[list[Change], list[Change], list[Change]]:
        """Split into (to embed, to unstore, unchanged)."""
        embed, unstore, unchanged = [], [], []
        for change in self.changes:
            if change.text is None:
                unstore.append(change)
            elif change.hash == change.stored_hash and change.stored_model == model_id:
                unchanged.append(change)
            else:
                embed.append(change)
        return embed, unstore, unchanged


@dataclass
class Outcome:
    """What settling a batch did; ``released`` keys changed meanwhile and will be claimed again."""

    stored: int = 0
    unstored: int = 0
    unchanged: int = 0
    failed: int = 0
    released: int = 0
    done: set[int] = field(default_factory=set)


def claim(conn: psycopg.Connection, source: Source, limit: int, lease_seconds: float) -> Batch:
    """Lease up to ``limit`` ready keys of ``source`` in one short transaction."""
    token = uuid.uuid4()
    params = {"limit": limit, "token": token, "lease": lease_seconds}
    with conn.transaction():
        rows = conn.execute(query("queue", "claim", **source.parts()), params).fetchall()
    return Batch(source, token, [Change(*row) for row in rows])


def settle(
    conn: psycopg.Connection,
    batch: Batch,
    model_id: str,
    vectors: dict[int, np.ndarray],
    errors: dict[int, str],
    backoff: tuple[float, float],
) -> Outcome:
    """Write what the batch produced, in one short transaction that keeps only what is still ours.

    ``vectors`` and ``errors`` are keyed by seq. A key whose lease was lost, or whose row changed
    since the claim, is not written: its newer change is (or will be) queued under a new seq.
    """
    embed, unstore, unchanged = batch.plan(model_id)
    parts = batch.source.parts()
    token = batch.token
    outcome = Outcome()
    with conn.transaction():
        stored = [c for c in embed if c.seq in vectors]
        if stored:
            outcome.stored = _store(
                conn,
                query("queue", "store", **parts),
                outcome,
                {
                    "seqs": [c.seq for c in stored],
                    "hashes": [c.hash for c in stored],
                    "embeddings": [vectors[c.seq] for c in stored],
                    "token": token,
                    "model": model_id,
                },
            )
        if unstore:
            outcome.unstored = _run(
                conn, query("queue", "unstore", **parts), outcome, {"seqs": [c.seq for c in unstore], "token": token}
            )
        if unchanged:
            outcome.unchanged = _run(
                conn, query("queue", "ack", **parts), outcome, {"seqs": [c.seq for c in unchanged], "token": token}
            )
        if errors:
            outcome.failed = _run(
                conn,
                query("queue", "fail", **parts),
                outcome,
                {
                    "seqs": list(errors),
                    "errors": list(errors.values()),
                    "token": token,
                    "base": backoff[0],
                    "max": backoff[1],
                },
            )
        outcome.released = len(release(conn, batch))
    return outcome


def release(conn: psycopg.Connection, batch: Batch) -> list[int]:
    """Give back the batch's keys that are still ours (claimable again at once)."""
    if not batch.changes:
        return []
    cur = conn.execute(query("queue", "release", **batch.source.parts()), {"seqs": batch.seqs, "token": batch.token})
    return [row[0] for row in cur.fetchall()]


def _store(conn: psycopg.Connection, statement: sql.Composed, outcome: Outcome, params: dict[str, Any]) -> int:
    """The upsert; the store's model constraint or vector size refusing it means a re-embed switched it."""
    try:
        return _run(conn, statement, outcome, params)
    except (psycopg.errors.CheckViolation, psycopg.errors.DataException) as exc:
        raise StoreChanged(
            f"the store no longer takes {params['model']} vectors ({str(exc).strip()}): it was re-embedded "
            "with another model; restart this worker with the store's model"
        ) from exc


def _run(conn: psycopg.Connection, statement: sql.Composed, outcome: Outcome, params: dict[str, Any]) -> int:
    seqs = [row[0] for row in conn.execute(statement, params).fetchall()]
    outcome.done.update(seqs)
    return len(seqs)
