"""What the application's writers feel while `syncer apply` installs a source on a large table.

```sh
python bench/apply_locks.py [--rows 1000000] [--writers 4]
```

In a fresh database with ``--rows`` rows, ``--writers`` threads update one random row per
transaction, nonstop. Then `syncer apply` (``schema.apply``) installs the source: triggers, queue,
store, search function, and the backfill queued in keyset batches of ``queue.BATCH_ROWS`` rows that
each commit. The writers' statement latencies before and during the apply are compared; the same
is done once with the whole backfill queued in one transaction (the batch size set above the row
count), which is what the lock on each queued key costs a writer when it is held to the end.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import threading
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from syncer import queue, schema  # noqa: E402
from syncer.database import Database  # noqa: E402
from syncer.report import format_table  # noqa: E402
from syncer.settings import Settings, SourceConfig  # noqa: E402

from common import fresh_database, postgres  # noqa: E402
from workload import NoModel  # noqa: E402

SETTLE_SECONDS = 2.0  # writers alone before the apply starts: the baseline


def fill(url: str, rows: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.bench_docs (id bigint PRIMARY KEY, body text)")
        conn.execute(
            "INSERT INTO public.bench_docs SELECT i, md5(i::text) || ' lorem ipsum dolor sit amet ' || i "
            "FROM generate_series(1, %s) i",
            [rows],
        )
        conn.execute("VACUUM ANALYZE public.bench_docs")


def write(url: str, rows: int, stop: threading.Event, samples: list[tuple[float, float]]) -> None:
    """Single-row UPDATEs, one per transaction, until stopped; (start, seconds) of each."""
    rng = random.Random()
    with psycopg.connect(url, autocommit=True) as conn:
        while not stop.is_set():
            key = rng.randint(1, rows)
            started = time.monotonic()
            conn.execute("UPDATE public.bench_docs SET body = body || '.' WHERE id = %s", [key])
            samples.append((started, time.monotonic() - started))


def measure(url: str, rows: int, writers: int, batch_rows: int) -> dict[str, float]:
    queue.BATCH_ROWS = batch_rows
    settings = Settings(
        database_url=url, sources=[SourceConfig(table="public.bench_docs", columns=("body",))], index_after_rows=0
    )
    stop = threading.Event()
    samples: list[list[tuple[float, float]]] = [[] for _ in range(writers)]
    threads = [threading.Thread(target=write, args=(url, rows, stop, s)) for s in samples]
    for thread in threads:
        thread.start()
    time.sleep(SETTLE_SECONDS)
    began = time.monotonic()
    schema.apply(Database(url), settings, NoModel())  # type: ignore[arg-type]
    ended = time.monotonic()
    stop.set()
    for thread in threads:
        thread.join()
    with psycopg.connect(url) as conn:  # the backfill, plus keys the writers' triggers queued first
        queued = conn.execute("SELECT count(*) FROM syncer.bench_docs_queue").fetchone()
    if queued != (rows,):
        raise RuntimeError(f"the queue holds {queued} keys, expected {rows}")
    flat = [s for per_writer in samples for s in per_writer]
    before = sorted(d for t, d in flat if t < began)
    during = sorted(d for t, d in flat if began <= t < ended)
    return {
        "apply s": ended - began,
        "p50 before ms": 1000 * statistics.median(before),
        "p99 before ms": 1000 * before[int(0.99 * (len(before) - 1))],
        "p50 during ms": 1000 * statistics.median(during),
        "p99 during ms": 1000 * during[int(0.99 * (len(during) - 1))],
        "worst during ms": 1000 * during[-1],
        "updates during": len(during),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--writers", type=int, default=4)
    args = p.parse_args(argv)
    results = {}
    with postgres() as server:
        for label, batch in ((f"keyset batches of {queue.BATCH_ROWS:,}", queue.BATCH_ROWS), ("one transaction", 0)):
            with fresh_database(server.url, f"bench_apply_{len(results)}") as url:
                fill(url, args.rows)
                results[label] = measure(url, args.rows, args.writers, batch or args.rows + 1)
    print(f"{args.rows:,} rows, {args.writers} writers updating one random row per transaction ({server.kind})")
    headers = ["backfill queued in", *next(iter(results.values()))]
    print(format_table(headers, [(label, *values.values()) for label, values in results.items()]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
