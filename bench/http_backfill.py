"""Backfill over HTTP, whole process: `syncer run --once` against a local fake OpenAI API, spawn to exit.

Each run copies a database that holds the rows (stdlib docstrings, cycled with a title prefix past
the corpus) and spawns `syncer run --once` with the OpenAI provider against the tests' fake server
(tests/openai_server.py: no model, answers at once), at syncer's defaults. Its log splits the time:
start-up (to "syncing"), storing the vectors (to the start of the HNSW index build), the build
("built hnsw index ... in X s"), and exit (from "queue drained"). Each size runs with the index
build at its defaults, with PostgreSQL's default 64 MB (SYNCER_INDEX_MEMORY=64MB; skipped where the
default sizing is no larger), with no parallel workers (SYNCER_INDEX_WORKERS=0), indexed whatever its
size (SYNCER_INDEX_MIN_ROWS=0: at defaults a store below the threshold gets no index) and with half
pgvector's ef_construction (SYNCER_INDEX_EF_CONSTRUCTION=32: a faster build of a graph of lower recall,
which `bench/search.py --ef-construction 32` measures), alternating within each round. Then, for
the smallest size, one run under `python -X importtime` and one under cProfile show where the whole
process's time goes.

    python bench/http_backfill.py [--rows 5000 100000] [--runs 3] [--dimensions 256] [--no-profile]

PostgreSQL: SYNCER_BENCH_DATABASE_URL, else a throwaway embedded server.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import statistics
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from syncer.indexing import Indexing

import wholeprocess
from common import (
    TABLE,
    BenchError,
    bodies,
    cpus,
    expected_hashes,
    fresh_database,
    loaded_template,
    markdown_table,
    postgres,
    server_version,
    triple,
    verify_store,
    write_results,
)
from wholeprocess import Finished, Phases, Usage

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from openai_server import FakeOpenAI  # noqa: E402 - the tests' server, found through the path above

BENCH_DIR = Path(__file__).resolve().parent
VARIANTS: dict[str, dict[str, str]] = {
    "defaults": {},
    "64MB": {"SYNCER_INDEX_MEMORY": "64MB"},
    "workers=0": {"SYNCER_INDEX_WORKERS": "0"},
    "during the backfill": {"SYNCER_INDEX_AFTER_ROWS": "1000000000"},  # maintained row by row, no build after
    "indexed": {"SYNCER_INDEX_MIN_ROWS": "0"},  # an index however small the store
    "ef_construction=32": {"SYNCER_INDEX_EF_CONSTRUCTION": "32"},  # half pgvector's: faster, lower recall
}
DURING_UP_TO = 20_000  # rows: maintaining the index row by row is run only on backfills this small
INDEX_VARIABLES = (  # the variants' own
    "SYNCER_INDEX_MEMORY",
    "SYNCER_INDEX_WORKERS",
    "SYNCER_INDEX_AFTER_ROWS",
    "SYNCER_INDEX_MIN_ROWS",
    "SYNCER_INDEX_EF_CONSTRUCTION",
)
MIN_INDEX_KB = 65536  # the floor of syncer's index memory sizing (sql/tables.sql)
TARGET_RATES = {5000: 2500.0, 100_000: 5000.0}  # issue 10, whole process at defaults, rows/s
TARGET_WHOLE_OVER_STORE, WHOLE_OVER_STORE_ROWS = 2.0, 100_000  # issue 10: whole process <= 2x storing the vectors
MODEL_DIMENSIONS = 1536  # text-embedding-3-small's own
RUN_ONCE = wholeprocess.syncer("run", "--once")
TOP_IMPORTS = 10
HNSW_INDEXES = "SELECT count(*) FROM pg_indexes WHERE tablename = 'bench_docs_embeddings' AND indexdef ~ 'hnsw'"
IMPORT_LINE = re.compile(r"^import time:\s+\d+ \|\s+(\d+) \| ( *)(\S+)$")

# What cProfile's main thread tells: (label, file, function, calling file or ""), cumulative seconds each.
PROFILE_STEPS = (
    ("main(), all of it", "syncer/cli.py", "main", ""),
    ("imports, wherever they happen", "<frozen importlib._bootstrap>", "_find_and_load", ""),
    ("check sources against the catalog", "syncer/schema.py", "resolve_all", ""),
    ("start the provider (client, tokenizer, probe)", "syncer/cli.py", "start_provider", ""),
    ("apply", "syncer/schema.py", "apply", ""),
    ("apply: migrate (alembic)", "syncer/schema.py", "migrate", ""),
    ("apply: queue the backfill", "syncer/queue.py", "enqueue", ""),
    ("count the queue for the progress display", "syncer/worker.py", "backlog_progress", ""),
    ("worker: run", "syncer/worker.py", "run", ""),
    ("worker: claim", "syncer/worker.py", "_claim", ""),
    ("worker: embed (requests in flight)", "syncer/worker.py", "_embed", ""),
    ("worker: wait for the settle before", "concurrent/futures/_base.py", "result", "syncer/worker.py"),
    ("worker: build the HNSW index", "syncer/worker.py", "_ensure_indexes", ""),
    ("worker: close (lease keeper)", "syncer/leases.py", "close", ""),
)


@dataclass(frozen=True)
class Measured:
    rows: int
    variant: str
    run: int
    phases: Phases
    usage: Usage

    @property
    def rate(self) -> float:
        return self.rows / self.phases.whole

    @property
    def store_rate(self) -> float:
        return self.rows / self.phases.store

    @property
    def whole_over_store(self) -> float:
        return self.phases.whole / self.phases.store


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, nargs="+", default=[5000, 100_000], help="sizes (default 5000 100000)")
    p.add_argument("--runs", type=int, default=3, help="rounds over every size and variant (default 3)")
    p.add_argument(
        "--dimensions", type=int, default=256, help="SYNCER_DIMENSIONS (default 256; 0: the model's own, 1536)"
    )
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS), help="index variants")
    p.add_argument("--no-profile", action="store_true", help="skip the importtime and cProfile runs")
    args = p.parse_args(argv)
    if args.runs < 1 or min(args.rows) < 1 or args.dimensions < 0:
        p.error("--runs and --rows must be positive, --dimensions not negative")
    return args


# Running syncer


@dataclass(frozen=True)
class Lab:
    """Where the runs happen: the server, the fake API, and a loaded template database per size."""

    server_url: str
    pg_pid: int | None
    api: FakeOpenAI
    dimensions: int
    templates: dict[int, str]  # size -> template database
    expected: dict[int, dict[int, bytes]]  # size -> each row's hash of its text

    def env(self, variant: str) -> dict[str, str]:
        settings = wholeprocess.openai_settings(TABLE, self.api.base_url, self.dimensions)
        base = {k: v for k, v in wholeprocess.environment(settings).items() if k not in INDEX_VARIABLES}
        return base | VARIANTS[variant]

    def backfill(self, size: int, variant: str, command: list[str], env: dict[str, str] | None = None) -> Finished:
        """``command`` (a `syncer run --once`) on a copy of the size's template; checks the store and index."""
        with fresh_database(self.server_url, f"bench_http_{os.getpid()}", self.templates[size]) as url:
            environment = (env or self.env(variant)) | {"SYNCER_DATABASE_URL": url}
            finished = wholeprocess.run(command, environment, self.pg_pid)
            verify_store(url, self.expected[size])
            with psycopg.connect(url) as conn:
                row = conn.execute(HNSW_INDEXES).fetchone()
        min_rows = environment.get("SYNCER_INDEX_MIN_ROWS")
        threshold = Indexing(min_rows=int(min_rows) if min_rows else None).threshold(
            self.dimensions or MODEL_DIMENSIONS
        )
        expected = int(threshold is not None and size >= threshold)
        if not row or row[0] != expected:
            raise BenchError(f"the store has {row and row[0]} HNSW indexes after the backfill, not {expected}")
        self.api.requests.clear()  # the fake server keeps every request: not 100k texts a run
        return finished


@contextmanager
def lab(server_url: str, pg_pid: int | None, api: FakeOpenAI, dimensions: int, sizes: list[int]) -> Iterator[Lab]:
    """A template database per size, loaded once, dropped at the end."""
    corpora = {size: bodies(size)[0] for size in sizes}
    with ExitStack() as stack:
        templates = {
            size: stack.enter_context(loaded_template(server_url, f"bench_http_template_{os.getpid()}_{size}", rows))
            for size, rows in corpora.items()
        }
        expected = {size: expected_hashes(rows) for size, rows in corpora.items()}
        yield Lab(server_url, pg_pid, api, dimensions, templates, expected)


def sized_kb(rows: int, dimensions: int) -> int:
    """The index memory syncer gives a build by default (sql/tables.sql), before its floor and cap."""
    return rows * (4 * dimensions + 400) * 5 // 4 // 1024


def variants_for(rows: int, dimensions: int, wanted: list[str]) -> list[str]:
    """The variants worth running: 64MB only where the default sizing gives more, the index maintained
    during the backfill only on small ones, "indexed" only where the defaults build no index, a lower
    ef_construction only where they build one."""
    more_memory = sized_kb(rows, dimensions or MODEL_DIMENSIONS) > MIN_INDEX_KB
    threshold = Indexing().threshold(dimensions or MODEL_DIMENSIONS)
    unindexed = threshold is None or rows < threshold
    skip = {
        "64MB": not more_memory,
        "during the backfill": rows > DURING_UP_TO,
        "indexed": not unindexed,
        "ef_construction=32": unindexed,
    }
    return [v for v in wanted if not skip.get(v, False)]


def measure(where: Lab, args: argparse.Namespace) -> list[Measured]:
    """A warm-up run, then rounds over every size and every variant."""
    where.backfill(min(args.rows), "defaults", RUN_ONCE)
    results: list[Measured] = []
    for run in range(1, args.runs + 1):
        for size in args.rows:
            for variant in variants_for(size, args.dimensions, args.variants):
                finished = where.backfill(size, variant, RUN_ONCE)
                results.append(Measured(size, variant, run, wholeprocess.phases(finished), finished.usage))
                report_progress(results[-1], args.runs)
    return results


def report_progress(m: Measured, runs: int) -> None:
    p = m.phases
    print(
        f"run {m.run}/{runs}, {m.rows} rows, {m.variant}: {m.rate:,.0f} rows/s whole ({p.whole:.2f} s: start-up "
        f"{p.startup:.2f}, store {p.store:.2f}, index {p.index:.1f}, exit {p.exit:.2f})",
        file=sys.stderr,
        flush=True,
    )


# Where the time goes


def profile(where: Lab, size: int) -> dict[str, Any]:
    """One run under -X importtime, one under cProfile (its main thread: settles run on a thread of their own)."""
    imports = where.backfill(size, "defaults", RUN_ONCE, where.env("defaults") | {"PYTHONPROFILEIMPORTTIME": "1"})
    with tempfile.TemporaryDirectory(prefix="syncer-bench-profile-") as tmp:
        stats_file = Path(tmp) / "syncer.prof"
        command = [sys.executable, str(BENCH_DIR / "profiled_run.py"), str(stats_file), "--", "run", "--once"]
        profiled = where.backfill(size, "defaults", command)
        steps = profile_steps(stats_file)
    return {
        "imports": import_summary(imports),
        "profile": {
            "seconds": profiled.seconds,
            "interpreter": profiled.stamp("interpreter") or 0.0,
            "teardown": profiled.seconds - (profiled.stamp("dumped") or profiled.seconds),
            "steps": steps,
        },
    }


def profile_steps(stats_file: Path) -> list[tuple[str, float]]:
    """Cumulative seconds of each of PROFILE_STEPS in the profile (0 when it never ran)."""
    import pstats

    stats: dict[Any, Any] = pstats.Stats(str(stats_file)).stats  # type: ignore[attr-defined]
    steps = []
    for label, path, function, caller in PROFILE_STEPS:
        seconds = 0.0
        for (file, _, name), (_, _, _, cumulative, callers) in stats.items():
            if name != function or not file.endswith(path):
                continue
            if not caller:
                seconds += cumulative
            else:
                seconds += sum(c[3] for (f, _, _), c in callers.items() if f.endswith(caller))
        steps.append((label, seconds))
    return steps


def import_summary(run: Finished) -> dict[str, Any]:
    """Top-level imports by package, in seconds (PYTHONPROFILEIMPORTTIME's own cost included)."""
    packages: dict[str, float] = {}
    for line in run.lines:
        match = IMPORT_LINE.match(line.text)
        if match and not match.group(2):  # top level: imported by no other import in progress
            root = match.group(3).split(".")[0]
            packages[root] = packages.get(root, 0.0) + int(match.group(1)) / 1e6
    top = sorted(packages.items(), key=lambda item: -item[1])[:TOP_IMPORTS]
    return {"total": sum(packages.values()), "top": top, "whole": run.seconds}


# The report


def rows_of(results: list[Measured], size: int, variant: str) -> list[Measured]:
    return [m for m in results if m.rows == size and m.variant == variant]


def median(values: list[float]) -> float:
    return statistics.median(values)


def throughput_table(results: list[Measured]) -> str:
    headers = ["rows", "HNSW build", "whole process rows/s", "whole s", "start-up s", "store s (rows/s)",
               "index s", "exit s", "whole / store"]  # fmt: skip
    table = []
    for size, variant in dict.fromkeys((m.rows, m.variant) for m in results):
        ms = rows_of(results, size, variant)
        store = median([m.phases.store for m in ms])
        table.append((
            f"{size:,}", variant, triple([m.rate for m in ms], 0), f"{median([m.phases.whole for m in ms]):.2f}",
            f"{median([m.phases.startup for m in ms]):.2f}", f"{store:.2f} ({size / store:,.0f})",
            triple([m.phases.index for m in ms], 1), f"{median([m.phases.exit for m in ms]):.2f}",
            triple([m.whole_over_store for m in ms], 2, "x"),
        ))  # fmt: skip
    return markdown_table(headers, table)


def variants_table(results: list[Measured]) -> str:
    """Each variant against the defaults of the same round: ratios of index and whole seconds."""
    headers = ["rows", "HNSW build", "index s vs defaults (same round)", "whole s vs defaults"]
    table = []
    for size, variant in dict.fromkeys((m.rows, m.variant) for m in results if m.variant != "defaults"):
        pairs = [(m, d) for m in rows_of(results, size, variant) for d in rows_of(results, size, "defaults")
                 if d.run == m.run]  # fmt: skip
        if not pairs:
            continue
        index = [m.phases.index / d.phases.index for m, d in pairs if d.phases.index]
        whole = [m.phases.whole / d.phases.whole for m, d in pairs]
        table.append((f"{size:,}", variant, triple(index, 2, "x") if index else "-", triple(whole, 2, "x")))
    return markdown_table(headers, table)


def cpu_table(results: list[Measured]) -> str:
    headers = ["rows", "HNSW build", "syncer CPU s", "PostgreSQL CPU s", "fake API CPU s", "other processes' CPU %"]
    table = []
    for size, variant in dict.fromkeys((m.rows, m.variant) for m in results):
        ms = rows_of(results, size, variant)
        pg = [m.usage.postgres for m in ms if m.usage.postgres is not None]
        table.append((
            f"{size:,}", variant, f"{median([m.usage.child for m in ms]):.1f}",
            f"{median(pg):.1f}" if pg else "-", f"{median([m.usage.own for m in ms]):.1f}",
            triple([100 * m.usage.others for m in ms], 0),
        ))  # fmt: skip
    return markdown_table(headers, table)


def verdicts(results: list[Measured]) -> list[str]:
    lines = []
    for size, target in TARGET_RATES.items():
        ms = rows_of(results, size, "defaults")
        if ms:
            rate = median([m.rate for m in ms])
            lines.append(f"- {size:,} rows at defaults, whole process >= {target:,.0f} rows/s: "
                         f"{'met' if rate >= target else 'NOT met'} (median {rate:,.0f})")  # fmt: skip
    ms = rows_of(results, WHOLE_OVER_STORE_ROWS, "defaults")
    if ms:
        ratio = median([m.whole_over_store for m in ms])
        met = "met" if ratio <= TARGET_WHOLE_OVER_STORE else "NOT met"
        lines.append(f"- {WHOLE_OVER_STORE_ROWS:,} rows at defaults, whole process <= {TARGET_WHOLE_OVER_STORE:g}x "
                     f"storing the vectors: {met} (median {ratio:.2f}x)")  # fmt: skip
    return lines


def phases_table(results: list[Measured], size: int) -> str:
    ms = rows_of(results, size, "defaults")
    whole = median([m.phases.whole for m in ms])
    parts = [
        ("start-up: spawn to the first claim (imports, settings, provider, apply)", [m.phases.startup for m in ms]),
        ("claim, embed, settle: to the last vector stored", [m.phases.store for m in ms]),
        ("HNSW index build", [m.phases.index for m in ms]),
        ('after the index to "queue drained"', [m.phases.other for m in ms]),
        ('exit: "queue drained" to the process\'s end', [m.phases.exit for m in ms]),
    ]
    rows = [(label, f"{median(v):.2f}", f"{100 * median(v) / whole:.0f}%") for label, v in parts]
    return markdown_table(["phase (from the log, median of the runs)", "s", "share"], rows)


def profile_tables(found: dict[str, Any]) -> str:
    prof = found["profile"]
    whole = prof["seconds"]
    rows = [("interpreter start: spawn to the first line of Python", prof["interpreter"])]
    rows += [(label, seconds) for label, seconds in prof["steps"]]
    rows += [("interpreter teardown: after main() to exit", prof["teardown"])]
    steps = markdown_table(["step (cProfile, main thread; steps nest)", "s", "share of the process"],
                           [(label, f"{s:.2f}", f"{100 * s / whole:.0f}%") for label, s in rows])  # fmt: skip
    imports = found["imports"]
    top = [(name, f"{seconds:.2f}") for name, seconds in imports["top"]]
    table = markdown_table(["package (top-level imports)", "s"], top)
    return (
        f"{steps}\n\nwhole process under cProfile: {whole:.2f} s\n\n{table}\n\n"
        f"imports in all: {imports['total']:.2f} s of a {imports['whole']:.2f} s process (-X importtime)"
    )


def print_report(args: argparse.Namespace, results: list[Measured], found: dict[str, Any] | None, pg: str) -> None:
    dims = args.dimensions or f"the model's own ({MODEL_DIMENSIONS})"
    print(f"\n## HTTP backfill, whole process: {', '.join(f'{r:,}' for r in args.rows)} rows, {args.runs} runs\n")
    print(f"FakeOpenAI (no delay), text-embedding-3-small, dimensions {dims}; {pg}; {cpus()} CPUs.\n")
    print(throughput_table(results), end="\n\n")
    print(variants_table(results), end="\n\n")
    print(cpu_table(results), end="\n\n")
    print("\n".join(verdicts(results)))
    if found is not None:
        size = min(args.rows)
        print(f"\n### Where the time goes: {size:,} rows at defaults\n")
        print(phases_table(results, size), end="\n\n")
        print(profile_tables(found))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now(UTC)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
    with postgres() as server, FakeOpenAI() as api:
        pg = server_version(server.url)
        with lab(server.url, server.pid, api, args.dimensions, args.rows) as where:
            results = measure(where, args)
            found = None if args.no_profile else profile(where, min(args.rows))
    print_report(args, results, found, pg)
    report = {
        "started": started.isoformat(timespec="seconds"),
        "args": vars(args),
        "postgres": pg,
        "runs": [asdict(m) | {"rate": m.rate, "whole_over_store": m.whole_over_store} for m in results],
        "profile": found,
    }
    print(f"\nresults: {write_results('http_backfill', report, started)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
