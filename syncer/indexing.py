"""When a store gets its HNSW index.

A small store gets none: a search scans it, which is exact and takes about 3 ms here, and no write pays the
index's upkeep (about 2 ms of PostgreSQL CPU a vector). Once the store holds more vectors than that
(``Indexing.threshold``), it is indexed; a large backlog is worked off first (building after loading is 6.5x faster
than maintaining the graph row by row), and bulk work (a backfill, reconcile or re-embed) always is.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from . import queue, tables
from .settings import Settings, memory_kb
from .sources import Source

# A scan of 3,000,000 numbers takes about 3 ms here when the vectors are stored in the row (up to 500
# dimensions; 7,812 vectors of 384 dimensions: p50 2.0 ms). Longer ones (over 2 kB) are stored out of line
# (TOAST) and read back at about 2.5 µs each, whatever their length: 1,000 vectors.
EXACT_SEARCH_NUMBERS, INLINE_DIMENSIONS, EXACT_SEARCH_OUT_OF_LINE = 3_000_000, 500, 1_000
HNSW_MAX_DIMENSIONS = 2_000  # pgvector's HNSW indexes vector columns of at most this many dimensions


@dataclass(frozen=True)
class Indexing:
    """When and how a store's HNSW index is built."""

    memory_kb: int | None = None  # the build's memory (None: sized to the index)
    workers: int | None = None  # its parallel workers (None: the server's setting)
    min_rows: int | None = None  # vectors a store holds before it is indexed (None: sized to the vectors)
    after_rows: int = 1000  # a backlog of more keys than this is worked off before the index is built
    m: int = tables.HNSW_M  # the graph's links per node
    ef_construction: int = tables.HNSW_EF_CONSTRUCTION  # candidates the build weighs per node

    @classmethod
    def from_settings(cls, settings: Settings) -> Indexing:
        memory = memory_kb(settings.index_memory) if settings.index_memory else None
        return cls(
            memory,
            settings.index_workers,
            settings.index_min_rows,
            settings.index_after_rows,
            settings.index_m,
            settings.index_ef_construction,
        )

    def threshold(self, dimensions: int) -> int | None:
        """Vectors of ``dimensions`` a store holds before it gets its index; None: never (pgvector cannot)."""
        if dimensions > HNSW_MAX_DIMENSIONS:
            return None
        if self.min_rows is not None:
            return self.min_rows
        return EXACT_SEARCH_NUMBERS // dimensions if dimensions <= INLINE_DIMENSIONS else EXACT_SEARCH_OUT_OF_LINE

    def due(self, conn: psycopg.Connection, source: Source, dimensions: int) -> bool:
        """Whether the store, if it has no index, should get it now: it holds, or is about to hold, enough vectors,
        and no more keys are queued than the inserts to come may maintain it for."""
        threshold = self.threshold(dimensions)
        if threshold is None:
            return False
        pending = queue.pending(conn, source, self.after_rows + 1)
        if pending > self.after_rows:
            return False
        return tables.store_rows(conn, source, threshold) + pending >= threshold

    def build(self, conn: psycopg.Connection, source: Source) -> bool:
        """Build the store's index unless it exists or another worker is building it; True if built now."""
        return tables.ensure_index(conn, source, self.memory_kb, self.workers, self.m, self.ef_construction)
