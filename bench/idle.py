"""Idle `syncer run` workers: their CPU, how soon a single edit is searchable, and whether a wake-up is lost.

    python bench/idle.py [--runs 3] [--workers 1,2] [--idle-seconds 30] [--edits 100] [--stress 15] [--quick]

A 5,000-row ``public.docs`` (title + body embedded, ``tests.providers:HashEmbedder``: no model),
applied and backfilled. Per run and worker count, that many `syncer run` processes start with
``SYNCER_POLL_INTERVAL=60``, so that only a NOTIFY wakes them within the minute; once the queue is
empty:

* idle CPU: user + system CPU of the worker processes and their database backends over
  ``--idle-seconds``, as a percentage of one CPU;
* edits: ``--edits`` single-row UPDATEs of the embedded column, one every 200 ms, each timed from
  its commit until the store holds a vector of the row's new text (``content_hash``, looked at every
  2 ms); an edit not searchable within a second was left to the poll: a lost wake-up;
* stress: 4 writer threads update rows (disjoint keys) with random pauses of 0-50 ms for
  ``--stress`` seconds, racing the workers going to sleep; then queue and log must empty within
  10 s, every row must have a current vector, and each key's last write is timed from its commit
  to its vector's ``embedded_at`` (the settle transaction's start).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]  # this checkout's syncer, and the benchmarks' helpers

from syncer.report import format_table  # noqa: E402
from syncer.sources import Source  # noqa: E402

from common import fresh_database, postgres, server_version  # noqa: E402
from workload import (  # noqa: E402
    DOCS_SOURCES,
    apply_docs,
    commit,
    cpu_seconds,
    fmt_spread,
    is_current,
    load_average,
    machine,
    percentile,
    results_dir,
    say,
    stale_rows,
    start_workers,
    stop_workers,
    wait_drained,
)

ROWS = 5_000
POLL_INTERVAL = "60"
EDIT_EVERY = 0.2  # seconds between edits
LOOK_EVERY = 0.002  # seconds between looks at the store
LOST_AFTER = 1.0  # seconds: an edit not searchable by then waited for the poll
STRESS_THREADS = 4
DRAIN_TIMEOUT = 10.0
TARGET_P50_MS, TARGET_CPU = 50.0, 1.0
UPDATE = "UPDATE public.docs SET body = %s WHERE id = %s"


@dataclass
class Result:
    run: int
    workers: int
    cpu_percent: float  # workers and their backends, % of one CPU
    cpu_processes: float  # the worker processes alone
    edits_ms: list[float]  # commit -> searchable, per edit (LOST_AFTER * 5 s when never seen)
    stress_writes: int
    stress_keys: int
    stress_ms: list[float]  # each key's last write: commit -> its vector's embedded_at
    stress_drained_s: float | None
    stress_stale: int
    problems: list[str]

    @property
    def lost(self) -> int:
        return sum(ms > LOST_AFTER * 1000 for ms in self.edits_ms)

    @property
    def stress_lost(self) -> int:
        return sum(ms > LOST_AFTER * 1000 for ms in self.stress_ms)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3, help="runs (default 3)")
    p.add_argument("--workers", default="1,2", help="worker counts (default 1,2)")
    p.add_argument("--idle-seconds", type=float, default=30, help="idle CPU window (default 30)")
    p.add_argument("--edits", type=int, default=100, help="single edits timed (default 100)")
    p.add_argument("--stress", type=float, default=15, help="seconds of racing writers (default 15)")
    p.add_argument(
        "--indexed",
        action="store_true",
        help="the store gets its HNSW index at once (SYNCER_INDEX_MIN_ROWS=0); default: 5,000 vectors of 16 "
        "dimensions are searched exactly, as syncer leaves a store that small",
    )
    p.add_argument("--quick", action="store_true", help="a short smoke run: 1 run, 5 s idle, 20 edits, 3 s stress")
    args = p.parse_args(argv)
    args.workers = [int(w) for w in args.workers.split(",")]
    if args.quick:
        args.runs, args.idle_seconds, args.edits, args.stress = 1, 5, 20, 3
    return args


def text(tag: str) -> str:
    """A body no other write has: its hash is the one to wait for."""
    return f"{tag} {uuid.uuid4().hex} " + "lorem ipsum dolor sit amet " * 20


def edits(url: str, source: Source, count: int, run: int) -> list[float]:
    """Milliseconds from each edit's commit until its row's vector is of the new text."""
    current = is_current(source)
    rng = random.Random(run)
    latencies = []
    with (
        psycopg.connect(url, autocommit=True) as writer,
        psycopg.connect(url, autocommit=True, prepare_threshold=0) as reader,
    ):
        for n in range(count):
            started = time.monotonic()
            key = rng.randint(1, ROWS)
            writer.execute(UPDATE, [text(f"edit {run}.{n}"), key])  # returns once committed
            committed = time.perf_counter()
            deadline = committed + 5 * LOST_AFTER
            while True:
                row = reader.execute(current, [key]).fetchone()
                now = time.perf_counter()
                if (row and row[0]) or now > deadline:
                    break
                time.sleep(LOOK_EVERY)
            latencies.append((now - committed) * 1000)
            time.sleep(max(0.0, started + EDIT_EVERY - time.monotonic()))
    return latencies


def stress(url: str, seconds: float) -> tuple[dict[int, float], int]:
    """Writer threads with random pauses: each key's last commit (epoch seconds), and how many writes."""
    last: dict[int, float] = {}
    writes = [0] * STRESS_THREADS
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def write(n: int) -> None:
        rng = random.Random(n)
        keys = list(range(1 + n * ROWS // STRESS_THREADS, 1 + (n + 1) * ROWS // STRESS_THREADS))
        rng.shuffle(keys)
        with psycopg.connect(url, autocommit=True) as conn:
            i = 0
            while time.monotonic() < end:
                key = keys[i % len(keys)]
                i += 1
                conn.execute(UPDATE, [text(f"stress {n}.{i}"), key])
                with lock:
                    last[key] = time.time()
                writes[n] += 1
                time.sleep(rng.random() * rng.choice((0.0005, 0.005, 0.05)))

    threads = [threading.Thread(target=write, args=(n,)) for n in range(STRESS_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return last, sum(writes)


def stress_latencies(conn: psycopg.Connection, source: Source, last: dict[int, float]) -> list[float]:
    query = sql.SQL("SELECT id, extract(epoch FROM embedded_at)::float8 FROM {} WHERE chunk = 0 AND id = ANY(%s)")
    stored = dict(conn.execute(query.format(source.store), [list(last)]).fetchall())
    return [(stored[key] - committed) * 1000 for key, committed in last.items() if key in stored]


def measure(url: str, source: Source, run: int, count: int, args: argparse.Namespace, logs: Path) -> Result:
    env = {"SYNCER_POLL_INTERVAL": POLL_INTERVAL}
    workers = start_workers(count, url, DOCS_SOURCES, env, logs, f"r{run}w{count}")
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            if wait_drained(conn, source, DRAIN_TIMEOUT) is None:
                raise RuntimeError("the queue did not empty before the idle window")
        time.sleep(2.0)  # asleep
        processes = [worker.process.pid for worker in workers if worker.process]
        pids = [pid for worker in workers for pid in worker.pids()]
        cpu, own, started = cpu_seconds(pids), cpu_seconds(processes), time.monotonic()
        time.sleep(args.idle_seconds)
        elapsed = time.monotonic() - started
        cpu_percent = (cpu_seconds(pids) - cpu) / elapsed * 100
        cpu_processes = (cpu_seconds(processes) - own) / elapsed * 100
        say(f"run {run}, {count} worker(s): idle CPU {cpu_percent:.2f} % ({cpu_processes:.2f} % the processes)")
        edit_ms = edits(url, source, args.edits, run)
        say(f"  edits: p50 {statistics.median(edit_ms):.1f} ms, max {max(edit_ms):.1f} ms")
        last, writes = stress(url, args.stress)
        with psycopg.connect(url, autocommit=True) as conn:
            drained = wait_drained(conn, source, DRAIN_TIMEOUT)
            stale = stale_rows(conn, source)
            stress_ms = stress_latencies(conn, source, last)
    finally:
        codes = stop_workers(workers)
    problems = [f"{w.name}: {line}" for w in workers for line in w.problems()]
    problems += [f"{w.name}: exit code {code}" for w, code in zip(workers, codes, strict=True) if code]
    return Result(
        run, count, cpu_percent, cpu_processes, edit_ms, writes, len(last), stress_ms, drained, stale,
        problems,
    )  # fmt: skip


def summary(results: list[Result], args: argparse.Namespace) -> str:
    rows = []
    for count in args.workers:
        mine = [r for r in results if r.workers == count]
        rows.append(
            (
                count,
                fmt_spread([r.cpu_percent for r in mine]),
                fmt_spread([statistics.median(r.edits_ms) for r in mine], 1),
                fmt_spread([percentile(r.edits_ms, 0.99) for r in mine], 1),
                "/".join(str(r.lost) for r in mine),
                fmt_spread([statistics.median(r.stress_ms) for r in mine if r.stress_ms], 1),
                fmt_spread([percentile(r.stress_ms, 0.99) for r in mine if r.stress_ms], 1),
                "/".join(f"{r.stress_lost}/{r.stress_keys}" for r in mine),
                "/".join("-" if r.stress_drained_s is None else f"{r.stress_drained_s:.2f}" for r in mine),
                "/".join(str(r.stress_stale) for r in mine),
            )
        )
    headers = [
        "workers",
        "idle CPU % of 1 CPU",
        "edit p50 ms",
        "edit p99 ms",
        "edits > 1 s",
        "stress p50 ms",
        "stress p99 ms",
        "stress keys > 1 s",
        "drained s",
        "stale rows",
    ]
    return format_table(headers, rows, width=80)


def verdict(results: list[Result], args: argparse.Namespace) -> str:
    lines = []
    for count in args.workers:
        mine = [r for r in results if r.workers == count]
        p50 = statistics.median(statistics.median(r.edits_ms) for r in mine)
        cpu = statistics.median(r.cpu_percent for r in mine)
        lines.append(
            f"{count} worker(s): change-to-searchable p50 {p50:.1f} ms (target <= {TARGET_P50_MS:g}: "
            f"{'met' if p50 <= TARGET_P50_MS else 'NOT met'}); idle CPU {cpu:.2f} % "
            f"(target < {TARGET_CPU:g} %: {'met' if cpu < TARGET_CPU else 'NOT met'})"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = results_dir("idle")
    results: list[Result] = []
    with postgres() as server, fresh_database(server.url, "bench_idle") as url:
        source = apply_docs(url, ROWS, out, args.indexed)
        header = [
            f"idle workers: SYNCER_POLL_INTERVAL={POLL_INTERVAL}, {ROWS:,}-row docs (title + body, HashEmbedder); "
            f"{args.idle_seconds:g} s idle CPU window, {args.edits} edits {EDIT_EVERY * 1000:.0f} ms apart, "
            f"{args.stress:g} s stress of {STRESS_THREADS} writers",
            f"syncer {commit()}; {server_version(url)}, {server.kind}; {machine()}",
            f"{args.runs} runs; median (min–max) over runs; counts listed per run",
        ]
        print("\n".join(header), flush=True)
        for run in range(1, args.runs + 1):
            for count in args.workers:
                results.append(measure(url, source, run, count, args, out))
    print(f"load average at the end: {load_average()}")
    print(summary(results, args))
    print(verdict(results, args))
    problems = [line for r in results for line in r.problems]
    print(f"worker logs: {len(problems)} warning/error lines" + (f", e.g. {problems[0]!r}" if problems else ""))
    data: dict[str, Any] = {"args": vars(args), "header": header, "results": [asdict(r) for r in results]}
    (out / "results.json").write_text(json.dumps(data, indent=1))
    print(f"raw figures and worker logs: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
