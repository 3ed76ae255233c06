"""Backfill throughput through the OpenAI provider against requests in flight, with a slow API.

A local server that speaks the embeddings API (tests/openai_server.py) answers every request after
a fixed delay (50 ms by default), as a remote API does. syncer backfills the same rows with
1, 2, 4 and 8 requests in flight; concurrency must hide the latency.

    python bench/openai_concurrency.py [--rows 4000] [--runs 3] [--delay 0.05] [--request-inputs 32]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
import warnings
from pathlib import Path

from pydantic import SecretStr

from syncer import schema
from syncer.database import Database
from syncer.providers.openai_compatible import OpenAIProvider, openai_options
from syncer.report import format_table
from syncer.settings import Settings, SourceConfig
from syncer.worker import Worker, WorkerOptions

from common import bodies, fresh_database, load_table, postgres, spread

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from openai_server import FakeOpenAI  # noqa: E402 - the tests' server, found through the path above

CONCURRENCY = (1, 2, 4, 8)
DIMENSIONS = 256


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=4000, help="rows to backfill per run (default 4000)")
    p.add_argument("--runs", type=int, default=3, help="runs per concurrency (default 3)")
    p.add_argument("--delay", type=float, default=0.05, help="seconds the API takes per request (default 0.05)")
    p.add_argument("--request-inputs", type=int, default=32, help="inputs per request (default 32)")
    return p.parse_args(argv)


def backfill_seconds(settings: Settings, url: str, expected: int) -> float:
    """``syncer run --once`` on a fresh source: apply, then drain the backfill; checks the store."""
    provider = OpenAIProvider(openai_options(settings))
    db = Database(url)
    start = time.perf_counter()
    applied = schema.apply(db, settings, provider)
    Worker(db, provider, [s for s, _ in applied], WorkerOptions.from_settings(settings)).run(once=True)
    elapsed = time.perf_counter() - start
    with db.connect() as conn:
        stored = conn.execute("SELECT count(*) FROM public.bench_docs_embeddings").fetchone()
    if stored != (expected,):
        raise RuntimeError(f"store holds {stored} vectors, expected {expected}")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
    rows, _ = bodies(args.rows)
    results: dict[int, list[float]] = {c: [] for c in CONCURRENCY}
    in_flight: dict[int, int] = {}
    with postgres() as server, FakeOpenAI() as api:
        api.delay = args.delay
        for concurrency in CONCURRENCY:
            for run in range(args.runs):
                with fresh_database(server.url, f"syncer_bench_openai_{concurrency}_{run}") as url:
                    load_table(url, rows)
                    settings = Settings(
                        database_url=SecretStr(url),
                        sources=[SourceConfig(table="public.bench_docs", columns=("body",))],
                        provider="openai",
                        openai_base_url=api.base_url,
                        openai_api_key=SecretStr("bench"),
                        dimensions=DIMENSIONS,
                        request_inputs=args.request_inputs,
                        concurrency=concurrency,
                    )
                    api.max_in_flight = 0
                    results[concurrency].append(len(rows) / backfill_seconds(settings, url, len(rows)))
                    in_flight[concurrency] = max(in_flight.get(concurrency, 0), api.max_in_flight)
    window = Settings().batch_size  # SYNCER_BATCH_SIZE applies to the runs, as to syncer
    print(
        f"OpenAI provider, {len(rows)} rows, API delay {args.delay * 1000:.0f} ms per request, "
        f"{args.request_inputs} inputs per request, claim window {window}, {args.runs} runs each\n"
    )
    base = statistics.median(results[1])
    table = [
        (
            str(c),
            str(in_flight[c]),
            *(f"{v:.0f}" for v in spread(results[c]).values()),
            f"{statistics.median(results[c]) / base:.2f}x",
        )
        for c in CONCURRENCY
    ]
    print(format_table(["concurrency", "max in flight", "rows/s min", "median", "max", "vs 1"], table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
