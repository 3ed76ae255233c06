"""What `syncer status` and the metrics report: rows, vectors and the queue by state, without scanning a large table.

Row counts of the source and the store come from the planner's statistics once a table is large
(``EXACT_BELOW`` rows), and are counted exactly below that; the queue and the log are always counted (one scan).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import psycopg
from psycopg import sql

from . import tables
from .database import transaction
from .queries import query
from .sources import Source

EXACT_BELOW = 100_000  # tables with fewer rows (by the planner's estimate) are counted exactly


@dataclass(frozen=True)
class QueueState:
    ready: int
    leased: int
    backoff: int
    dead: int
    failing: int  # not dead, failed at least once (ready or backing off again)
    oldest_seconds: float | None  # the oldest change still pending (dead rows excluded)
    last_error: str | None

    @property
    def pending(self) -> int:
        return self.ready + self.leased + self.backoff


@dataclass(frozen=True)
class Status:
    source: str
    rows: int | None
    rows_estimated: bool
    embedded: int | None  # rows with vectors (when estimated: vectors)
    embedded_estimated: bool
    vectors: int | None  # chunks, counted (None: estimated, or a store that is not counted)
    indexed: bool  # the store has its HNSW index (else searches scan it: exact, fine while it is small)
    queue: QueueState

    def as_json(self) -> dict[str, Any]:
        return asdict(self) | {"queue": asdict(self.queue) | {"pending": self.queue.pending}}


def queue_state(conn: psycopg.Connection, source: Source) -> QueueState:
    with transaction(conn):
        row = conn.execute(query("report", "queue_state", queue=source.queue, log=source.log)).fetchone()
    assert row is not None
    return QueueState(*row)


def status(conn: psycopg.Connection, source: Source) -> Status:
    with transaction(conn):
        rows, rows_estimated = _estimate(conn, source.table), True
        if rows is None or rows < EXACT_BELOW:
            counted = conn.execute(query("report", "count", table=source.table)).fetchone()
            rows, rows_estimated = (int(counted[0]) if counted else None), False
        embedded, vectors = _estimate(conn, source.store), None
        estimated = embedded is not None and embedded >= EXACT_BELOW
        if not estimated:
            counted = conn.execute(query("report", "count_store", store=source.store)).fetchone()
            embedded, vectors = (int(counted[0]), int(counted[1])) if counted else (None, None)
        indexed = tables.indexed(conn, source)
    return Status(source.name, rows, rows_estimated, embedded, estimated, vectors, indexed, queue_state(conn, source))


def _estimate(conn: psycopg.Connection, table: sql.Identifier) -> int | None:
    """The planner's row count of a table (None: never analyzed)."""
    row = conn.execute(query("report", "estimate"), {"table": table.as_string(None)}).fetchone()
    return int(row[0]) if row and row[0] is not None else None


def queued(conn: psycopg.Connection, source: Source) -> int:
    with transaction(conn):
        row = conn.execute(query("report", "queued", queue=source.queue, log=source.log)).fetchone()
    return row[0] if row else 0


def format_table(
    headers: list[str], rows: list[tuple[Any, ...]], width: int = 60, exact: frozenset[int] = frozenset()
) -> str:
    """A plain aligned text table; long cells are cut to ``width`` characters and their whitespace
    collapsed, except in the ``exact`` columns (keys a user types back, say)."""

    def cell(value: Any, column: int) -> str:
        text = f"{value:.4f}" if isinstance(value, float) else "" if value is None else str(value)
        if column in exact:
            return text
        text = " ".join(text.split())
        return text if len(text) <= width else text[: width - 1] + "…"

    cells = [[cell(v, i) for i, v in enumerate(row)] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)
