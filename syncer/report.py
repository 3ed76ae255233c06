"""What `syncer status` shows, and the plain text tables the CLI prints."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from . import fragments
from .database import transaction
from .queries import query
from .sources import Source


@dataclass(frozen=True)
class Status:
    source: str
    rows: int
    embedded: int
    queued: int  # waiting, failing ones included; dead ones apart
    failing: int
    dead: int
    oldest_seconds: float | None  # the oldest change still pending (dead rows excluded)
    last_error: str | None


def status(conn: psycopg.Connection, source: Source) -> Status:
    with transaction(conn):
        row = conn.execute(query("report", "status", **fragments.parts(source))).fetchone()
    assert row is not None
    return Status(source.name, *row)


def queued(conn: psycopg.Connection, source: Source) -> int:
    with transaction(conn):
        row = conn.execute(query("report", "queued", queue=source.queue)).fetchone()
    return row[0] if row else 0


def format_table(headers: list[str], rows: list[tuple[Any, ...]], width: int = 60) -> str:
    """A plain aligned text table; long cells are cut to ``width`` characters."""

    def cell(value: Any) -> str:
        text = f"{value:.4f}" if isinstance(value, float) else "" if value is None else str(value)
        text = " ".join(text.split())
        return text if len(text) <= width else text[: width - 1] + "…"

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)
