"""Search from an application in Python: ``syncer.Searcher``, typed results, the configured model loaded once.

    from syncer import Searcher

    with Searcher() as searcher:                      # settings from SYNCER_* variables
        for match in searcher.search("docs", "how do I make soup?", k=5, hybrid=True):
            print(match.key, round(match.score, 3), match.text)

Thread-safe: a small connection pool serves concurrent searches (``syncer serve`` is built on it).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import numpy as np
import psycopg
from psycopg_pool import ConnectionPool

from . import catalog, search
from .database import KEEPALIVES, Database, register_vector_types
from .errors import ConfigError
from .fragments import PARAGRAPH, WHITESPACE
from .providers import Provider, load_provider
from .settings import Settings, SourceConfig, template_pieces
from .sources import Source

POOL_SIZE = 4  # connections for concurrent searches
DETAILS = ("similarity", "rrf_score", "text_rank", "match_chunk", "match_start", "match_end", "match_text")


@dataclass(frozen=True)
class Match:
    """A row found: its key and columns, its score, and the passage that matched."""

    source: str
    key: dict[str, Any]
    row: dict[str, Any]  # the source row's columns
    score: float  # cosine similarity; with hybrid search, the fused (reciprocal rank) score
    similarity: float | None  # cosine similarity of its best chunk (None: found by full text only)
    chunk: int  # which chunk of the row matched (0: the first, or the whole text)
    start: int | None  # the chunk's character offsets in the row's text
    end: int | None
    text: str  # the chunk's text, or the row's text when it is one chunk

    def as_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "row": self.row,
            "score": self.score,
            "similarity": self.similarity,
            "chunk": self.chunk,
            "start": self.start,
            "end": self.end,
            "text": self.text,
        }


class Searcher:
    """Vector or hybrid search over syncer's sources, with the configured provider's query embeddings."""

    def __init__(self, settings: Settings | None = None, *, provider: Provider | None = None) -> None:
        self.settings = settings or Settings()
        self.db = Database.from_settings(self.settings)
        self.provider = provider or load_provider(self.settings)
        self._sources: dict[str, Source] = {}
        self._lock = threading.Lock()
        self._pool = ConnectionPool(
            self.db.url,
            min_size=1,
            max_size=POOL_SIZE,
            kwargs={"autocommit": True, "prepare_threshold": None, "application_name": self.db.application_name}
            | KEEPALIVES,
            configure=register_vector_types,
            open=True,
        )

    def __enter__(self) -> Searcher:
        return self

    def __exit__(self, *exc: object | TracebackType) -> None:
        self.close()

    def close(self) -> None:
        self._pool.close()

    @property
    def model_id(self) -> str:
        return self.provider.model_id

    def embed_query(self, text: str) -> np.ndarray:
        """The query embedding the store expects (the model's query prompt applied)."""
        return np.asarray(self.provider.embed_query(text), dtype=np.float32)

    def source(self, name: str) -> Source:
        """A configured source, resolved against the catalog once; ``ConfigError`` if there is none."""
        with self._lock:
            if name not in self._sources:
                config = self.settings.source(name)
                with self._pool.connection() as conn:
                    self._sources[name] = catalog.resolve(conn, config)
            return self._sources[name]

    def search(
        self,
        source: str,
        text: str,
        k: int = 10,
        filter: dict[str, Any] | None = None,
        hybrid: bool = False,
    ) -> list[Match]:
        """The ``k`` rows of ``source`` that best match ``text``: by vector search, or hybrid search."""
        resolved = self.source(source)
        embedding = self.embed_query(text)
        with self._pool.connection() as conn:
            try:
                headers, rows = search.top(conn, resolved, embedding, k, filter, text if hybrid else None)
            except psycopg.errors.UndefinedFunction as exc:
                raise ConfigError(f"source {source!r} has no search functions: has `syncer apply` run?") from exc
        return [_match(resolved, dict(zip(headers, row, strict=True))) for row in rows]


def _match(source: Source, found: dict[str, Any]) -> Match:
    row = {name: value for name, value in found.items() if name not in DETAILS}
    similarity = found.get("similarity")
    score = found.get("rrf_score", similarity)
    text = found["match_text"] if found["match_text"] is not None else row_text(source.config, row)
    return Match(
        source=source.name,
        key={k: row[k] for k in source.keys},
        row=row,
        score=float(score or 0.0),
        similarity=similarity,
        chunk=found["match_chunk"],
        start=found["match_start"],
        end=found["match_end"],
        text=text,
    )


def row_text(config: SourceConfig, row: dict[str, Any]) -> str:
    """A row's text as syncer embeds it (for a row that is one chunk), from the row's columns."""
    if config.template is None:
        parts = [str(row[c]).strip(WHITESPACE) for c in config.columns if row.get(c) is not None]
        return PARAGRAPH.join(p for p in parts if p)
    pieces = [literal + ("" if field is None or row.get(field) is None else str(row[field])) for literal, field in
              template_pieces(config.template)]  # fmt: skip
    return "".join(pieces).strip(WHITESPACE)
