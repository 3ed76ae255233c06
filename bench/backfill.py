"""Backfill throughput of syncer against the raw model, and the latency of a single-row change.

Each run loads the same rows into a fresh database, then times

* raw: one ``model.encode`` call over every text (syncer's encode batch size and document prompt,
  normalized): the strongest baseline, as sentence-transformers sorts the whole list by length;
* syncer: ``schema.apply`` + ``Worker.run(once=True)``, i.e. ``syncer run --once`` on a new source
  (migrate, queue the backfill, claim windows, embed, store), checked against the table afterwards.

Both share one process and one loaded model, so their ratio holds where absolute timings drift;
not where other processes compete for the CPU, so each run also reports the CPU share used by
everything else on the machine (and PostgreSQL's own CPU seconds). Then, with a worker following
changes in a background thread, single-row UPDATEs are timed from their COMMIT to the moment the
store holds the new text's hash.

    python bench/backfill.py [--rows 5000] [--runs 3] [--edits 50]

PostgreSQL: SYNCER_BENCH_DATABASE_URL (a fresh database is created in it per run), else a
throwaway embedded server. Other SYNCER_* variables (e.g. SYNCER_INDEX_AFTER_ROWS) apply to syncer.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import random
import statistics
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import psutil
import psycopg
import torch

from syncer import schema
from syncer.database import Database
from syncer.providers import load_provider
from syncer.providers.sentence_transformers import SentenceTransformerProvider
from syncer.report import format_table
from syncer.settings import Settings, SourceConfig
from syncer.worker import Worker, WorkerOptions

from common import (
    POLL_SECONDS,
    TABLE,
    WHITESPACE,
    BenchError,
    Server,
    bodies,
    content_hash,
    cpu_counters,
    embedded_text,
    fresh_database,
    load_table,
    percentiles_ms,
    postgres,
    server_processes,
    spread,
    verify_store,
    wait_for_exits,
    write_results,
)

TARGET_RATIO = 0.9
BUSY_OTHERS = 0.10  # CPU share of other processes above which a run's rates are not trustworthy
WARMUP_TEXTS = 256
IDLE_SECONDS = 0.05  # pause before each edit, so that the worker is back waiting
EDIT_TIMEOUT = 30.0

STORED_HASH = "SELECT content_hash FROM public.bench_docs_embeddings WHERE id = %s AND chunk = 0"
UPDATE_BODY = "UPDATE public.bench_docs SET body = %s WHERE id = %s"


@dataclass(frozen=True)
class Span:
    """A measured stretch of time and the CPU used meanwhile outside this process."""

    seconds: float
    postgres_cpu: float | None  # CPU seconds of the embedded server's processes (None: external server)
    others: float  # share of all CPUs used by other processes (PostgreSQL excluded when local)


@dataclass(frozen=True)
class Run:
    run: int
    rows: int
    raw: Span
    syncer: Span
    apply_seconds: float  # part of syncer.seconds: migrate, create the source's objects, queue

    @property
    def raw_rate(self) -> float:
        return self.rows / self.raw.seconds

    @property
    def syncer_rate(self) -> float:
        return self.rows / self.syncer.seconds

    @property
    def ratio(self) -> float:
        return self.syncer_rate / self.raw_rate

    @property
    def others(self) -> float:
        return max(self.raw.others, self.syncer.others)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=5000, help="rows to backfill (default 5000)")
    p.add_argument("--runs", type=int, default=3, help="backfill runs (default 3)")
    p.add_argument("--edits", type=int, default=50, help="single-row updates timed for latency (default 50)")
    args = p.parse_args(argv)
    if args.rows < 1 or args.runs < 1 or args.edits < 0:
        p.error("--rows and --runs must be positive, --edits not negative")
    return args


# CPU accounting


@contextmanager
def span(pg_pid: int | None) -> Iterator[list[Span]]:
    """Time the block; its Span is in the yielded list once the block ends."""
    measured: list[Span] = []
    processes = server_processes(pg_pid)
    before, start = cpu_counters(pg_pid), time.perf_counter()
    yield measured
    seconds = time.perf_counter() - start
    wait_for_exits(pg_pid, processes)
    after, elapsed = cpu_counters(pg_pid), time.perf_counter() - start
    busy, own, pg = (b - a for a, b in zip(before, after, strict=True))
    others = max(0.0, busy - own - pg) / (elapsed * (psutil.cpu_count() or 1))
    measured.append(Span(seconds, pg if pg_pid is not None else None, others))


# The measurements


def encode_raw(provider: SentenceTransformerProvider, texts: list[str]) -> None:
    """What syncer's provider does per claimed window, over all texts in one call."""
    provider.model.encode(
        texts,
        prompt=provider.document_prompt,
        batch_size=provider.batch_size,
        normalize_embeddings=True,
        show_progress_bar=False,
    )


def time_raw(provider: SentenceTransformerProvider, texts: list[str], pg_pid: int | None) -> Span:
    with span(pg_pid) as measured:
        encode_raw(provider, texts)
    return measured[0]


def time_syncer(
    settings: Settings, provider: SentenceTransformerProvider, url: str, pg_pid: int | None
) -> tuple[Span, float]:
    """``syncer run --once`` on the new source, and the seconds of it spent in apply."""
    db = Database(url)
    with span(pg_pid) as measured:
        start = time.perf_counter()
        applied = schema.apply(db, settings, provider)
        apply_seconds = time.perf_counter() - start
        Worker(db, provider, [source for source, _ in applied], WorkerOptions.from_settings(settings)).run(once=True)
    return measured[0], apply_seconds


def measure_run(
    run: int, settings: Settings, provider: SentenceTransformerProvider, url: str, pg_pid: int | None, rows: list[str]
) -> Run:
    load_table(url, rows)
    texts = {row_id: text for row_id, body in enumerate(rows, 1) if (text := embedded_text(body))}
    raw = time_raw(provider, list(texts.values()), pg_pid)
    synced, apply_seconds = time_syncer(settings, provider, url, pg_pid)
    verify_store(url, {row_id: content_hash(text) for row_id, text in texts.items()})
    return Run(run, len(texts), raw, synced, apply_seconds)


def measure_latency(
    settings: Settings, provider: SentenceTransformerProvider, url: str, rows: list[str], edits: int
) -> list[float]:
    """Seconds from each single-row UPDATE's commit until the store holds its new text's hash."""
    db = Database(url)
    worker = Worker(db, provider, schema.resolve_all(db, settings), WorkerOptions.from_settings(settings))
    thread = threading.Thread(target=worker.run, name="bench-worker")
    thread.start()
    try:
        if not worker.wakeup.listening.wait(EDIT_TIMEOUT):
            raise BenchError("the worker did not start listening for notifications")
        picked = random.Random(7).sample(range(1, len(rows) + 1), min(edits, len(rows)))
        with psycopg.connect(url) as writer, psycopg.connect(url, autocommit=True) as reader:
            return [
                edit_latency(writer, reader, row_id, f"{rows[row_id - 1].strip(WHITESPACE)}\n\nEdit {n}.")
                for n, row_id in enumerate(picked, 1)
            ]
    finally:
        worker.stop()
        thread.join()


def edit_latency(writer: psycopg.Connection, reader: psycopg.Connection, row_id: int, body: str) -> float:
    expected = content_hash(body)
    time.sleep(IDLE_SECONDS)
    writer.execute(UPDATE_BODY, (body, row_id))
    writer.commit()
    committed = time.perf_counter()
    while (row := reader.execute(STORED_HASH, (row_id,)).fetchone()) is None or row[0] != expected:
        if time.perf_counter() - committed > EDIT_TIMEOUT:
            raise BenchError(f"row {row_id}: new text not embedded within {EDIT_TIMEOUT:.0f}s")
        time.sleep(POLL_SECONDS)
    return time.perf_counter() - committed


# The report


def context(settings: Settings, provider: SentenceTransformerProvider, server: Server) -> dict[str, Any]:
    with psycopg.connect(server.url) as conn:
        version = conn.execute("SHOW server_version").fetchone()
    return {
        "python": platform.python_version(),
        "cpus": psutil.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": str(provider.model.device),
        "model": provider.model_id,
        "encode_batch_size": provider.batch_size,
        "claim_window": settings.batch_size,
        "index_after_rows": settings.index_after_rows,
        "postgres": f"{version[0] if version else '?'}, {server.kind}",
    }


def print_context(info: dict[str, Any], rows: int, distinct: int, runs: int) -> None:
    origin = f"{distinct} distinct docstrings" + (", cycled with a title prefix" if distinct < rows else "")
    index = "built after the backfill" if rows > info["index_after_rows"] else "built before the backfill"
    print(f"syncer backfill benchmark: {rows} rows ({origin}), {runs} run{'s' if runs != 1 else ''}")
    print(f"  cpus {info['cpus']}, torch {info['torch']} with {info['torch_threads']} threads on {info['device']}")
    print(f"  model {info['model']}, encode batch size {info['encode_batch_size']}")
    print(
        f"  claim window {info['claim_window']} rows, index_after_rows {info['index_after_rows']}: HNSW index {index}"
    )
    print(f"  postgres {info['postgres']}")


def run_cells(r: Run) -> tuple[str, ...]:
    pg = "-" if r.syncer.postgres_cpu is None else f"{r.syncer.postgres_cpu:.1f}"
    rates = (f"{r.raw_rate:.1f}", f"{r.syncer_rate:.1f}", f"{r.ratio:.3f}")
    return (str(r.run), *rates, f"{r.apply_seconds:.2f}", pg, f"{100 * r.others:.0f}")


def print_runs(runs: list[Run]) -> None:
    headers = ["run", "raw rows/s", "syncer rows/s", "ratio", "apply s", "postgres cpu s", "other cpu %"]
    print()
    print(format_table(headers, [run_cells(r) for r in runs]))
    print()
    summary = [
        (label, *(f"{v:.{digits}f}" for v in spread(values).values()))
        for label, values, digits in (
            ("raw rows/s", [r.raw_rate for r in runs], 1),
            ("syncer rows/s", [r.syncer_rate for r in runs], 1),
            ("ratio", [r.ratio for r in runs], 3),
        )
    ]
    print(format_table(["", "min", "median", "max"], summary))
    median = statistics.median(r.ratio for r in runs)
    verdict = "met" if median >= TARGET_RATIO else "NOT met"
    print(f"\ntarget: median ratio >= {TARGET_RATIO:.2f}: {verdict} ({median:.3f})")
    busiest = max(r.others for r in runs)
    if busiest > BUSY_OTHERS:
        print(
            f"warning: other processes used up to {100 * busiest:.0f}% of the CPUs during the runs; "
            "rates and ratios are unreliable: rerun on a quiet machine"
        )


def print_latency(latency: dict[str, float], edits: int) -> None:
    print(
        f"\nchange latency, {edits} single-row UPDATEs one at a time (commit -> new hash in the store): "
        f"p50 {latency['p50']:.1f} ms, p99 {latency['p99']:.1f} ms, max {latency['max']:.1f} ms"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now(UTC)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("syncer.embedding").setLevel(logging.ERROR)  # texts cut to the model's input limit
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
    rows, distinct = bodies(args.rows)
    runs: list[Run] = []
    latencies: list[float] = []
    with postgres() as server:
        # database_url only names the server: each run connects to its own fresh database.
        settings = Settings(database_url=server.url, sources=[SourceConfig(table=TABLE, columns=("body",))])
        provider = load_provider(settings)
        if not isinstance(provider, SentenceTransformerProvider) or provider.model is None:
            raise BenchError("the raw baseline needs the sentence-transformers provider on torch (SYNCER_ST_BACKEND)")
        info = context(settings, provider, server)
        print_context(info, len(rows), distinct, args.runs)
        encode_raw(provider, rows[:WARMUP_TEXTS])  # first-call costs
        for n in range(1, args.runs + 1):
            with fresh_database(server.url, f"syncer_bench_{os.getpid()}_{n}") as url:
                runs.append(measure_run(n, settings, provider, url, server.pid, rows))
                print(f"run {n}/{args.runs}: ratio {runs[-1].ratio:.3f}", file=sys.stderr, flush=True)
                if n == args.runs and args.edits:
                    latencies = measure_latency(settings, provider, url, rows, args.edits)
    print_runs(runs)
    report: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "args": vars(args),
        "context": info,
        "runs": [asdict(r) | {"raw_rate": r.raw_rate, "syncer_rate": r.syncer_rate, "ratio": r.ratio} for r in runs],
        "summary": {name: spread([getattr(r, name) for r in runs]) for name in ("raw_rate", "syncer_rate", "ratio")},
        "target_ratio": TARGET_RATIO,
    }
    if latencies:
        report["latency_ms"] = percentiles_ms(latencies)
        print_latency(report["latency_ms"], len(latencies))
    print(f"\nresults: {write_results('backfill', report, started)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
