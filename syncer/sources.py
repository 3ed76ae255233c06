"""What a source is once resolved against the catalog: its table, key, text definition and objects.

A source's objects: its change log and queue (``syncer.<name>_log``, ``syncer.<name>_queue``),
capture triggers, the embedding store (``<table>_embeddings`` unless configured), its HNSW index
and the search function (``syncer.search_<name>``). Names here; SQL built from them in ``fragments``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from psycopg import sql

from .settings import SourceConfig

SYNCER_SCHEMA = "syncer"


@dataclass(frozen=True)
class Source:
    """A configured source resolved against the live catalog."""

    config: SourceConfig
    schema: str
    table_name: str
    keys: tuple[str, ...]
    columns: tuple[tuple[str, str], ...]  # (name, SQL type) of every column of the table
    store_schema: str
    store_name: str
    queue_name: str
    vector_schema: str | None = None  # where pgvector lives (None: not installed yet)
    partitioned: bool = False
    shadow: bool = False  # the store a re-embed is filling, beside the live one

    @property
    def name(self) -> str:
        return self.config.source_name

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.table_name}"

    @property
    def qualified_store(self) -> str:
        return f"{self.store_schema}.{self.store_name}"

    @property
    def table(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.table_name)

    @property
    def store(self) -> sql.Identifier:
        return sql.Identifier(self.store_schema, self.store_name)

    @property
    def queue(self) -> sql.Identifier:
        return sql.Identifier(SYNCER_SCHEMA, self.queue_name)

    @property
    def log(self) -> sql.Identifier:
        """The change log the capture triggers append to (one per source; a re-embed's shadow has none)."""
        return sql.Identifier(SYNCER_SCHEMA, self.log_name)

    @property
    def log_name(self) -> str:
        return f"{self.name}_log"

    @property
    def index_name(self) -> str:
        return f"syncer_{self.name}_hnsw"

    @property
    def search_fn(self) -> sql.Identifier:
        return sql.Identifier(SYNCER_SCHEMA, f"search_{self.name}")

    @property
    def hybrid_fn(self) -> sql.Identifier:
        return sql.Identifier(SYNCER_SCHEMA, f"hybrid_search_{self.name}")

    @property
    def definition(self) -> dict[str, Any]:
        """What decides a row's text, its identity and what is stored of it: recorded when applied,
        compared at every start and by every settle."""
        template = self.config.template
        text: dict[str, Any] = (
            {"template": template} if template is not None else {"columns": list(self.config.columns)}
        )
        chunking = self.config.chunking
        return text | {
            "key": list(self.keys),
            "chunking": chunking if isinstance(chunking, str) else chunking.model_dump(),
            "search_config": self.config.search_config,
        }

    @property
    def chunked(self) -> bool:
        """Whether a row may have several vectors (chunks): its search function ranks rows by their best."""
        return self.config.chunking != "none"

    def with_queue(self, queue_name: str) -> Source:
        return replace(self, queue_name=queue_name)

    def as_shadow(self) -> Source:
        """Where a re-embed builds the next store (with its own queue) while this one keeps serving."""
        return replace(
            self,
            store_schema=SYNCER_SCHEMA,
            store_name=f"{self.name}_next",
            queue_name=f"{self.name}_reembed",
            shadow=True,
        )


def describe(definition: dict[str, Any]) -> str:
    """``columns title, body; key id`` — a definition as a person reads it."""
    text = (
        f"template {definition['template']!r}"
        if "template" in definition
        else "columns " + ", ".join(definition.get("columns", []))
    )
    described = f"{text}; key {', '.join(definition.get('key', []))}"
    chunking = definition.get("chunking", "auto")
    if chunking != "auto":
        described += f"; chunking {chunking if isinstance(chunking, str) else json.dumps(chunking)}"
    if definition.get("search_config", "simple") != "simple":
        described += f"; search_config {definition['search_config']}"
    return described


def same_text(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two definitions make the same text of a row (their key, chunking or search config aside)."""
    return (a.get("template"), a.get("columns")) == (b.get("template"), b.get("columns"))
