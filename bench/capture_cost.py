"""What capture costs the application's writers: each statement on a plain table and on the same table
after `syncer apply` (no worker running), timed from the client, and their ratio within one run.

    python bench/capture_cost.py [--runs 5] [--reps 5] [--single-tx 500] [--chunks 4] [--quick]

Two identical tables, ``public.docs_plain`` and ``public.docs`` (id bigint primary key, title, body,
lang, n; 5,000 rows, a 43-character title and a 593-character body); ``docs`` is a syncer source
(``schema.apply``, embedded columns title and body; the backfill it queues is dropped). Bulk
statements are timed as ``BEGIN; statement; COMMIT``, each after CHECKPOINT, emptying syncer's
queue and log, reloading the table (triggers off) and VACUUM ANALYZE, plain and syncer alternating
``--reps`` times; a run's figure is the median of its repetitions. The single-row INSERT is pgbench
(one client, prepared, durable commit) in chunks of ``--single-tx`` transactions, the variants
alternating chunk by chunk with queue and log emptied before each; a run's figure is total time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import psycopg
from psycopg import sql

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]  # this checkout's syncer, and the benchmarks' helpers

from syncer import schema  # noqa: E402
from syncer.database import Database  # noqa: E402
from syncer.report import format_table  # noqa: E402
from syncer.settings import Settings, SourceConfig  # noqa: E402

from common import fresh_database, postgres, server_version  # noqa: E402
from workload import (  # noqa: E402
    QUIET_CHECKPOINTS,
    NoModel,
    commit,
    create_docs,
    fmt_spread,
    load_average,
    machine,
    pgbench,
    pgbench_latency,
    results_dir,
    say,
)

ROWS = 5_000
PLAIN, SYNCER = "docs_plain", "docs"
QUEUE, LOG = sql.Identifier("syncer", "docs_queue"), sql.Identifier("syncer", "docs_log")


class Statement:
    """A statement measured on both tables: its SQL (``{table}`` filled in), whether the table starts filled,
    how many log rows syncer's triggers must write for it, and the target ratio syncer / plain."""

    def __init__(self, label: str, text: str, filled: bool, logged: int, target: float, tolerance: float = 0.0):
        self.label, self.text, self.filled, self.logged = label, text, filled, logged
        self.target, self.tolerance = target, tolerance

    def on(self, table: str) -> sql.Composed:
        return sql.SQL(self.text).format(table=sql.Identifier("public", table))

    def target_text(self) -> str:
        return f"{self.target:g}x (±{self.tolerance:.0%})" if self.tolerance else f"<= {self.target:g}x"

    def met(self, ratio: float) -> bool:
        return ratio <= self.target * (1 + self.tolerance)


BULK = [
    Statement("INSERT…SELECT 5,000 rows", "INSERT INTO {table} SELECT * FROM public.docs_src", False, 1, 1.5),
    Statement("UPDATE embedded column, all rows", "UPDATE {table} SET body = body || ' edited'", True, 1, 1.5),
    Statement("UPDATE other column, all rows", "UPDATE {table} SET n = n + 1", True, 0, 1.0, 0.05),
    Statement("DELETE all rows", "DELETE FROM {table}", True, 1, 2.0),
]
SINGLE = Statement(
    "single-row INSERT, durable commit",
    "INSERT INTO {table} VALUES (nextval('public.bench_ids'), 'A new title', repeat('lorem ipsum ', 50), 'en', 1);\n",
    True,
    1,
    1.15,
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5, help="runs (default 5)")
    p.add_argument("--reps", type=int, default=5, help="repetitions of each bulk statement per run (default 5)")
    p.add_argument("--single-tx", type=int, default=500, help="transactions per single-row chunk (default 500)")
    p.add_argument("--chunks", type=int, default=4, help="single-row chunks per variant per run (default 4)")
    p.add_argument("--quick", action="store_true", help="a short smoke run: 1 run, 2 reps, 2 chunks of 100")
    args = p.parse_args(argv)
    if args.quick:
        args.runs, args.reps, args.single_tx, args.chunks = 1, 2, 100, 2
    return args


def prepare(url: str) -> None:
    """The two tables, the rows they are reloaded from, and `syncer apply` on docs (its backfill dropped)."""
    with psycopg.connect(url, autocommit=True) as conn:
        create_docs(conn, "docs_src", ROWS)
        create_docs(conn, PLAIN, ROWS)
        create_docs(conn, SYNCER, ROWS)
        conn.execute("CREATE SEQUENCE public.bench_ids START 1000000")
    settings = Settings(database_url=url, sources=[SourceConfig(table=f"public.{SYNCER}", columns=("title", "body"))])
    schema.apply(Database(url), settings, NoModel())  # type: ignore[arg-type]
    with psycopg.connect(url, autocommit=True) as conn:
        triggers = conn.execute(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'public.docs'::regclass AND NOT tgisinternal"
        ).fetchone()
        if not triggers or triggers[0] < 4:
            raise RuntimeError(f"syncer apply left {triggers} triggers on public.docs")
        conn.execute(sql.SQL("TRUNCATE {}, {}").format(QUEUE, LOG))


def reset(conn: psycopg.Connection, table: str, filled: bool) -> None:
    """CHECKPOINT, then queue and log emptied and the table reloaded with no trigger firing, then VACUUM ANALYZE:
    the measured statement writes no full-page image (the cheapest plain statement, so the strictest ratio)."""
    ident = sql.Identifier("public", table)
    conn.execute("CHECKPOINT")
    conn.execute("SET session_replication_role = replica")
    conn.execute(sql.SQL("TRUNCATE {}, {}, {}").format(ident, QUEUE, LOG))
    if filled:
        conn.execute(sql.SQL("INSERT INTO {} SELECT * FROM public.docs_src").format(ident))
    conn.execute("RESET session_replication_role")
    conn.execute(sql.SQL("VACUUM ANALYZE {}").format(ident))


def logged(conn: psycopg.Connection) -> int:
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(LOG)).fetchone()
    return row[0] if row else 0


def check_logged(conn: psycopg.Connection, statement: Statement, table: str, expected: int) -> None:
    """syncer's triggers must have done their work (and the plain table's none)."""
    found = logged(conn)
    want = expected if table == SYNCER else 0
    if found != want:
        raise RuntimeError(f"{statement.label} on {table}: {found} log rows, expected {want}")


def time_bulk(conn: psycopg.Connection, statement: Statement, table: str) -> float:
    reset(conn, table, statement.filled)
    text = statement.on(table)
    started = time.perf_counter()
    conn.execute("BEGIN")
    conn.execute(text)
    conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    check_logged(conn, statement, table, statement.logged)
    return elapsed


def time_single(conn: psycopg.Connection, url: str, table: str, transactions: int) -> float:
    """Seconds per transaction of a chunk (pgbench's average; connection set-up excluded)."""
    conn.execute(sql.SQL("TRUNCATE {}, {}").format(QUEUE, LOG))
    script = SINGLE.on(table).as_string(conn)
    latency = pgbench_latency(pgbench(url, script, ["-c", "1", "-t", str(transactions)], appname="bench-capture"))
    check_logged(conn, SINGLE, table, transactions)
    return latency


def alternate(rep: int) -> list[str]:
    return [PLAIN, SYNCER] if rep % 2 == 0 else [SYNCER, PLAIN]


def measure_run(conn: psycopg.Connection, url: str, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """One run: per statement, the plain and syncer figures (seconds) and their ratio."""
    out: dict[str, dict[str, float]] = {}
    for statement in BULK:
        times: dict[str, list[float]] = {PLAIN: [], SYNCER: []}
        for rep in range(args.reps):
            for table in alternate(rep):
                times[table].append(time_bulk(conn, statement, table))
        plain, ours = statistics.median(times[PLAIN]), statistics.median(times[SYNCER])
        out[statement.label] = {"plain": plain, "syncer": ours, "ratio": ours / plain}
    for table in (PLAIN, SYNCER):
        reset(conn, table, True)
    totals = {PLAIN: 0.0, SYNCER: 0.0}
    for chunk in range(2 * args.chunks):
        for table in alternate(chunk):
            totals[table] += time_single(conn, url, table, args.single_tx) / (2 * args.chunks)
    out[SINGLE.label] = {"plain": totals[PLAIN], "syncer": totals[SYNCER], "ratio": totals[SYNCER] / totals[PLAIN]}
    return out


def summary(runs: list[dict[str, dict[str, float]]]) -> str:
    def column(label: str, key: str) -> list[float]:
        return [run[label][key] for run in runs]

    rows = []
    for statement in [*BULK, SINGLE]:
        ratios = column(statement.label, "ratio")
        scale, unit = (1e6, "µs/tx") if statement is SINGLE else (1e3, "ms")
        rows.append(
            (
                statement.label,
                f"{statistics.median(column(statement.label, 'plain')) * scale:.1f} {unit}",
                f"{statistics.median(column(statement.label, 'syncer')) * scale:.1f} {unit}",
                fmt_spread(ratios, unit="x"),
                statement.target_text(),
                "yes" if statement.met(statistics.median(ratios)) else "NO",
            )
        )
    headers = ["statement", "plain (median)", "syncer (median)", "syncer/plain median (min–max)", "target", "met"]
    return format_table(headers, rows, width=80)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = results_dir("capture_cost")
    with postgres(QUIET_CHECKPOINTS) as server, fresh_database(server.url, "bench_capture_cost") as url:
        prepare(url)
        header = [
            f"capture cost: {ROWS:,}-row docs, plain vs after `syncer apply` (title + body embedded), no worker",
            f"syncer {commit()}; {server_version(url)}, {server.kind}; {machine()}",
            f"{args.runs} runs; bulk: median of {args.reps} reps per run; "
            f"single-row: {2 * args.chunks} alternating pgbench chunks of {args.single_tx} tx per run",
        ]
        print("\n".join(header), flush=True)
        runs = []
        with psycopg.connect(url, autocommit=True, prepare_threshold=None) as conn:
            for n in range(1, args.runs + 1):
                runs.append(measure_run(conn, url, args))
                ratios = ", ".join(f"{label}: {v['ratio']:.2f}x" for label, v in runs[-1].items())
                say(f"run {n}/{args.runs} (load {load_average()}): {ratios}")
    print(f"load average at the end: {load_average()}")
    print(summary(runs))
    (out / "runs.json").write_text(json.dumps({"args": vars(args), "header": header, "runs": runs}, indent=1))
    print(f"raw figures: {out / 'runs.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
