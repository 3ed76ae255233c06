"""Concurrent writers with two `syncer run` workers: writer latency with and without syncer, and the
NOTIFYs the writers send.

    python bench/writers.py [--runs 3] [--seconds 10] [--writers 1,20,50] [--quick]

pgbench runs each writer count for ``--seconds``; every transaction is one single-row UPDATE of the
embedded column (body) of a random row of a 5,000-row table, durable commit. Scenarios, in an order
that rotates from run to run:

* a: no syncer: the same statements on ``public.docs_plain``, a copy of the table with no triggers;
* b: syncer (``public.docs`` applied, title + body embedded) with two `syncer run` processes
  (default settings: NOTIFY on, poll every 5 s);
* c: the same with ``SYNCER_NOTIFY=false`` (the workers poll only; writers then never NOTIFY);
* d: syncer's triggers with no worker running (what capture alone costs the writers); the log is
  embedded afterwards by `syncer run --once`, unmeasured.

The workers embed with ``tests.providers:HashEmbedder`` (a vector from each text's hash: no model).
Latency per transaction comes from pgbench's log; NOTIFYs are counted by a separate connection
that LISTENs on ``syncer``; the writers' wait events are sampled from pg_stat_activity every 20 ms.
After each writer count the workers must empty the queue and the log (the catch-up time is
reported), and after each scenario every row's stored vector must be of its current text.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
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
    QUIET_CHECKPOINTS,
    WorkerProcess,
    apply_docs,
    commit,
    cpu_seconds,
    create_docs,
    fmt_spread,
    load_average,
    machine,
    percentile,
    pgbench,
    results_dir,
    say,
    stale_rows,
    start_workers,
    stop_workers,
    wait_drained,
)

ROWS = 5_000
SOURCES = DOCS_SOURCES
SCENARIOS = {  # name: (table written, workers' settings; None: no worker)
    "a no syncer": ("docs_plain", None),
    "b syncer, NOTIFY on": ("docs", {"SYNCER_NOTIFY": "true"}),
    "c syncer, poll only": ("docs", {"SYNCER_NOTIFY": "false"}),
    "d triggers, no worker": ("docs", None),  # what capture alone costs; the log is embedded afterwards
}
BASELINE = "a no syncer"
WORKERS = 2
TARGET_WRITERS, TARGET_P99_RATIO = 20, 1.5
APPNAME = "bench-writers"
DRAIN_TIMEOUT = 60.0
SCRIPT = (
    "\\set id random(1, {rows})\n"
    "UPDATE {table} SET body = md5(random()::text) || substr(body, 33) WHERE id = :id;\n"  # body stays 593 chars
)


@dataclass
class Phase:
    """One writer count of one scenario in one run."""

    run: int
    scenario: str
    writers: int
    transactions: int
    tps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    notifies: int
    catch_up_s: float | None  # workers emptying queue and log after the writers stopped (None: no worker)
    worker_cpu: float | None  # CPU of the workers and their backends while the writers ran, % of one CPU
    waits: dict[str, float] = field(default_factory=dict)  # share of sampled writer time


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3, help="runs (default 3)")
    p.add_argument("--seconds", type=int, default=10, help="seconds per writer count (default 10)")
    p.add_argument("--writers", default="1,20,50", help="writer counts (default 1,20,50)")
    p.add_argument(
        "--indexed",
        action="store_true",
        help="the store gets its HNSW index at once (SYNCER_INDEX_MIN_ROWS=0); default: 5,000 vectors of 16 "
        "dimensions are searched exactly, as syncer leaves a store that small",
    )
    p.add_argument("--quick", action="store_true", help="a short smoke run: 1 run, 2 s per writer count")
    args = p.parse_args(argv)
    args.writers = [int(w) for w in args.writers.split(",")]
    if args.quick:
        args.runs, args.seconds = 1, 2
    return args


class Listener(threading.Thread):
    """Counts NOTIFYs on channel 'syncer' (a connection of its own)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.conn = psycopg.connect(url, autocommit=True)
        self.conn.execute("LISTEN syncer")
        self.count = 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            for _ in self.conn.notifies(timeout=0.1):
                self.count += 1

    def close(self) -> None:
        self.halt.set()
        self.join()
        self.conn.close()


class Sampler(threading.Thread):
    """The wait events of the writers' active backends, every 20 ms."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.counts: Counter[str] = Counter()
        self.halt = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.url, autocommit=True, prepare_threshold=None) as conn:
            while not self.halt.wait(0.02):
                rows = conn.execute(
                    "SELECT coalesce(wait_event_type || ':' || wait_event, 'CPU') FROM pg_stat_activity "
                    "WHERE application_name = %s AND state = 'active'",
                    [APPNAME],
                ).fetchall()
                self.counts.update(r[0] for r in rows)

    def shares(self) -> dict[str, float]:
        total = sum(self.counts.values()) or 1
        return {event: n / total for event, n in self.counts.most_common(3)}


def prepare(url: str, logs: Path, indexed: bool) -> Source:
    """The plain copy, and docs applied with its backfill embedded."""
    with psycopg.connect(url, autocommit=True) as conn:
        create_docs(conn, "docs_plain", ROWS)
    return apply_docs(url, ROWS, logs, indexed)


def reset(conn: psycopg.Connection, source: Source) -> None:
    """The same housekeeping before every scenario: vacuum what the writers and workers touch, then CHECKPOINT."""
    for table in (sql.Identifier("public", "docs_plain"), source.table, source.store, source.queue, source.log):
        conn.execute(sql.SQL("VACUUM ANALYZE {}").format(table))
    conn.execute("CHECKPOINT")


def run_writers(url: str, table: str, writers: int, seconds: float) -> tuple[list[int], float, dict[str, float]]:
    """pgbench: per-transaction latencies (µs), elapsed seconds, and the wait events sampled."""
    script = SCRIPT.format(rows=ROWS, table=sql.Identifier("public", table).as_string(None))
    sampler = Sampler(url)
    with tempfile.TemporaryDirectory(prefix="bench-writers-") as tmp:
        prefix = os.path.join(tmp, "tx")
        sampler.start()
        started = time.monotonic()
        try:
            pgbench(
                url,
                script,
                ["-c", str(writers), "-j", str(min(writers, 2)), "-T", str(seconds), "-l", "--log-prefix", prefix],
                appname=APPNAME,
            )
        finally:
            sampler.halt.set()
            sampler.join()
        elapsed = time.monotonic() - started
        latencies = []
        for path in glob.glob(prefix + "*"):
            with open(path) as f:
                latencies += [int(line.split()[2]) for line in f]
    return latencies, min(elapsed, seconds), sampler.shares()


def scenario(
    url: str, source: Source, name: str, run: int, args: argparse.Namespace, logs: Path, problems: dict[str, list[str]]
) -> list[Phase]:
    table, env = SCENARIOS[name]
    with psycopg.connect(url, autocommit=True) as conn:
        reset(conn, source)
        workers: list[WorkerProcess] = []
        if env is not None:
            workers = start_workers(WORKERS, url, SOURCES, env, logs, f"r{run}{name[0]}")
        listener = Listener(url)
        listener.start()
        phases = []
        try:
            time.sleep(1.0)  # the workers asleep
            pids = [pid for worker in workers for pid in worker.pids()]
            for writers in args.writers:
                listener.count = 0
                cpu = cpu_seconds(pids)
                latencies, elapsed, waits = run_writers(url, table, writers, args.seconds)
                worker_cpu = (cpu_seconds(pids) - cpu) / elapsed * 100 if workers else None
                catch_up = wait_drained(conn, source, DRAIN_TIMEOUT) if workers else None
                if workers and catch_up is None:
                    raise RuntimeError(f"{name}: the workers did not empty queue and log within {DRAIN_TIMEOUT:.0f} s")
                time.sleep(0.2)  # the last NOTIFYs arrive
                phase = Phase(
                    run=run,
                    scenario=name,
                    writers=writers,
                    transactions=len(latencies),
                    tps=len(latencies) / elapsed,
                    p50_ms=percentile(latencies, 0.5) / 1000,
                    p99_ms=percentile(latencies, 0.99) / 1000,
                    max_ms=max(latencies) / 1000,
                    notifies=listener.count,
                    catch_up_s=catch_up,
                    worker_cpu=worker_cpu,
                    waits=waits,
                )
                phases.append(phase)
                say(
                    f"run {run} {name} {writers:2d} writers: {phase.tps:7.0f} tps, p50 {phase.p50_ms:6.2f} ms, "
                    f"p99 {phase.p99_ms:6.2f} ms, {phase.notifies} NOTIFYs, workers' CPU {worker_cpu} %, "
                    f"catch-up {catch_up} s"
                )
                time.sleep(1.0)
        finally:
            listener.close()
            codes = stop_workers(workers)
        if table == "docs" and not workers:  # catch up unmeasured, so that the next scenario starts even
            workers = [WorkerProcess(f"bench-r{run}{name[0]}-catch-up", url, SOURCES, {}, logs, ["--once"])]
            workers[0].start()
            assert workers[0].process is not None
            codes = [workers[0].process.wait(DRAIN_TIMEOUT * 5)]
        for worker, code in zip(workers, codes, strict=True):
            problems[worker.name] = worker.problems() + ([f"exit code {code}"] if code else [])
        if workers and stale_rows(conn, source):
            raise RuntimeError(f"{name}: rows left without a current vector")
    return phases


def ratio_to_baseline(phases: list[Phase], phase: Phase) -> float:
    (base,) = [p for p in phases if p.run == phase.run and p.writers == phase.writers and p.scenario == BASELINE]
    return phase.p99_ms / base.p99_ms


def summary(phases: list[Phase], args: argparse.Namespace) -> str:
    rows = []
    for writers in args.writers:
        for name in SCENARIOS:
            mine = [p for p in phases if p.writers == writers and p.scenario == name]
            waits: Counter[str] = Counter()
            for p in mine:
                waits.update(p.waits)
            top = ", ".join(f"{event} {share / len(mine):.0%}" for event, share in waits.most_common(2))
            catch_up = [p.catch_up_s for p in mine if p.catch_up_s is not None]
            cpu = [p.worker_cpu for p in mine if p.worker_cpu is not None]
            rows.append(
                (
                    writers,
                    name,
                    fmt_spread([p.tps for p in mine], 0),
                    fmt_spread([p.p50_ms for p in mine]),
                    fmt_spread([p.p99_ms for p in mine]),
                    fmt_spread([ratio_to_baseline(phases, p) for p in mine], unit="x"),
                    "/".join(str(p.notifies) for p in mine),
                    f"{statistics.median(cpu):.0f}" if cpu else "",
                    f"{statistics.median(catch_up):.2f}" if catch_up else "",
                    top,
                )
            )
    headers = [
        "writers",
        "scenario",
        "tps",
        "p50 ms",
        "p99 ms",
        "p99 / a",
        "NOTIFYs",
        "workers CPU %",
        "catch-up s",
        "top waits",
    ]
    return format_table(headers, rows, width=80)


def verdict(phases: list[Phase]) -> str:
    lines = []
    for name in SCENARIOS:
        if name == BASELINE:
            continue
        mine = [ratio_to_baseline(phases, p) for p in phases if p.writers == TARGET_WRITERS and p.scenario == name]
        if mine:
            median = statistics.median(mine)
            met = "met" if median <= TARGET_P99_RATIO else "NOT met"
            lines.append(
                f"target p99 at {TARGET_WRITERS} writers <= {TARGET_P99_RATIO}x no-syncer, {name}: "
                f"median {median:.2f}x -> {met}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = results_dir("writers")
    problems: dict[str, list[str]] = {}
    phases: list[Phase] = []
    with postgres(QUIET_CHECKPOINTS) as server, fresh_database(server.url, "bench_writers") as url:
        source = prepare(url, out, args.indexed)
        header = [
            f"concurrent writers: single-row UPDATE of the embedded column, {ROWS:,} rows, durable commit, "
            f"{args.seconds:g} s per writer count; syncer with {WORKERS} `syncer run` workers (HashEmbedder)",
            f"syncer {commit()}; {server_version(url)}, {server.kind}; {machine()}",
            f"{args.runs} runs; scenarios rotate; figures are median (min–max) over runs; "
            "NOTIFYs listed per run; p99 / a = p99 over no-syncer p99 in the same run",
        ]
        print("\n".join(header), flush=True)
        names = list(SCENARIOS)
        for run in range(1, args.runs + 1):
            shift = (run - 1) % len(names)
            for name in names[shift:] + names[:shift]:
                phases += scenario(url, source, name, run, args, out, problems)
    print(f"load average at the end: {load_average()}")
    print(summary(phases, args))
    print(verdict(phases))
    for name, lines in problems.items():
        if lines:
            print(f"{name}: {len(lines)} warning/error lines in its log, e.g. {lines[0]!r}")
    if not any(problems.values()):
        print(f"worker logs: no warning or error in {len(problems)} logs ({out})")
    data: dict[str, Any] = {"args": vars(args), "header": header, "phases": [asdict(p) for p in phases]}
    (out / "phases.json").write_text(json.dumps(data, indent=1))
    print(f"raw figures and worker logs: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
