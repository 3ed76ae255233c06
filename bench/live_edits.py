"""Live edits during a large backfill: how soon a single-row edit is searchable while 100,000 rows wait.

`syncer run` (a whole process, following changes) backfills the rows (stdlib docstrings, cycled)
through the OpenAI provider against the tests' fake server, throttled so that the backfill runs at a
few hundred rows per second, in one of two ways:

* ``request``: every request takes ``--delay`` seconds, whatever it holds (a remote API's latency;
  syncer keeps SYNCER_CONCURRENCY requests in flight);
* ``input``: every request takes ``--delay-per-input`` seconds per input (a server whose time grows
  with the batch, as a local model's does).

Once the backfill is under way, a quiet window (``--quiet`` seconds) measures its rate; then a random
row is edited every ``--interval`` seconds (most are still queued for the backfill when edited), each
timed from its COMMIT until the store holds the new text's hash, and the backfill's rate is measured
again meanwhile: it must keep moving.

    python bench/live_edits.py [--rows 100000] [--runs 3] [--edits 120] [--interval 0.5] [--throttles request input]

PostgreSQL: SYNCER_BENCH_DATABASE_URL, else a throwaway embedded server.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import statistics
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

import wholeprocess
from common import (
    STORE,
    TABLE,
    WHITESPACE,
    BenchError,
    bodies,
    content_hash,
    cpus,
    fresh_database,
    loaded_template,
    markdown_table,
    percentiles_ms,
    postgres,
    server_version,
    stored_vectors,
    triple,
    write_results,
)
from wholeprocess import Child

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from openai_server import FakeOpenAI  # noqa: E402 - the tests' server, found through the path above

TARGET_P50 = 1.0  # seconds, issue 10
POLL_SECONDS = 0.01  # how often the store is asked about the edits not yet searchable
START_TIMEOUT = 120.0  # seconds for syncer to start and store its first vectors
EDIT_TIMEOUT = 120.0  # an edit not searchable by then fails the run
UPDATE_BODY = "UPDATE public.bench_docs SET body = %s WHERE id = %s"
STORED_HASHES = f"SELECT id, content_hash FROM {STORE} WHERE id = ANY(%s) AND chunk = 0"


class ThrottledAPI(FakeOpenAI):
    """The tests' fake API, answering after ``delay`` seconds plus ``per_input`` seconds per input."""

    per_input = 0.0

    def _respond(self, path: str, headers: dict[str, str], body: Any) -> tuple[int, dict[str, str], Any]:
        time.sleep(self.per_input * len(body.inputs or ()))
        return super()._respond(path, headers, body)


@dataclass(frozen=True)
class Edited:
    row_id: int
    queued: bool  # the row had no vector yet when edited (its backfill still to come)
    seconds: float  # commit to searchable


@dataclass(frozen=True)
class Measured:
    throttle: str
    run: int
    quiet_rate: float  # backfill rows/s before the edits
    edit_rate: float  # backfill rows/s while they were made
    edits: tuple[Edited, ...]

    @property
    def latency_ms(self) -> dict[str, float]:
        return percentiles_ms([e.seconds for e in self.edits])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=100_000, help="rows to backfill (default 100000)")
    p.add_argument("--runs", type=int, default=3, help="runs per throttle (default 3)")
    p.add_argument("--edits", type=int, default=120, help="single-row edits per run (default 120)")
    p.add_argument("--interval", type=float, default=0.5, help="seconds between edits (default 0.5)")
    p.add_argument("--quiet", type=float, default=20.0, help="seconds of backfill measured before the edits")
    p.add_argument("--throttles", nargs="+", choices=("request", "input"), default=["request", "input"])
    p.add_argument("--delay", type=float, default=1.25, help="request throttle: seconds per request (default 1.25)")
    p.add_argument(
        "--delay-per-input", type=float, default=0.01, help="input throttle: seconds per input (default 0.01)"
    )
    p.add_argument("--dimensions", type=int, default=256, help="SYNCER_DIMENSIONS (default 256; 0: the model's own)")
    args = p.parse_args(argv)
    if args.runs < 1 or args.edits < 1 or args.rows < args.edits or args.interval <= 0:
        p.error("--runs and --edits must be positive, --rows at least --edits, --interval above 0")
    return args


def throttle(api: ThrottledAPI, name: str, args: argparse.Namespace) -> str:
    """Set the fake API's throttle; its description."""
    api.delay, api.per_input = (args.delay, 0.0) if name == "request" else (0.0, args.delay_per_input)
    if name == "request":
        return f"{args.delay * 1000:.0f} ms per request"
    return f"{args.delay_per_input * 1000:.0f} ms per input"


# One run


def measure_run(
    url: str, api: ThrottledAPI, rows: list[str], args: argparse.Namespace, name: str, run: int
) -> Measured:
    """`syncer run` backfilling; a quiet window, then the edits; the process stopped at the end."""
    env = wholeprocess.environment(wholeprocess.openai_settings(TABLE, api.base_url, args.dimensions))
    with wholeprocess.running(wholeprocess.syncer("run"), env | {"SYNCER_DATABASE_URL": url}) as child:
        wait_for_backfill(child, url)
        before, started = stored_vectors(url), time.monotonic()
        time.sleep(args.quiet)
        during, edits_started = stored_vectors(url), time.monotonic()
        edits = edit_rows(url, rows, args.edits, args.interval, random.Random(run))
        after, ended = stored_vectors(url), time.monotonic()
        if child.process.poll() is not None:
            raise BenchError(f"syncer exited during the run:\n{child.tail()}")
    if after >= len(rows):
        raise BenchError("the backfill finished before the edits did: more --rows or a slower throttle")
    quiet_rate = (during - before) / (edits_started - started)
    return Measured(name, run, quiet_rate, (after - during) / (ended - edits_started), tuple(edits))


def wait_for_backfill(child: Child, url: str) -> None:
    """Until syncer claims and the store holds its first vectors."""
    child.wait_for(wholeprocess.SYNCING, START_TIMEOUT)
    deadline = time.monotonic() + START_TIMEOUT
    while stored_vectors(url) == 0:
        if time.monotonic() > deadline or child.process.poll() is not None:
            raise BenchError(f"no vector stored within {START_TIMEOUT:.0f}s:\n{child.tail()}")
        time.sleep(POLL_SECONDS * 10)


def edit_rows(url: str, rows: list[str], edits: int, interval: float, rng: random.Random) -> list[Edited]:
    """An edit every ``interval`` seconds; each timed from its commit until the store holds its new hash."""
    picked = rng.sample(range(1, len(rows) + 1), edits)
    pending: dict[int, tuple[bytes, float, bool]] = {}  # row -> (new hash, committed, queued when edited)
    done: list[Edited] = []
    with psycopg.connect(url, autocommit=True) as writer, psycopg.connect(url, autocommit=True) as reader:
        next_edit = time.monotonic()
        while picked or pending:
            if picked and time.monotonic() >= next_edit:
                row_id = picked.pop()
                pending[row_id] = edit(writer, reader, row_id, rows[row_id - 1], len(picked))
                next_edit += interval
            done += searchable(reader, pending)
            time.sleep(POLL_SECONDS)
    return done


def edit(
    writer: psycopg.Connection, reader: psycopg.Connection, row_id: int, body: str, n: int
) -> tuple[bytes, float, bool]:
    """Edit one row (autocommit: committed when execute returns); (new hash, commit time, still queued)."""
    queued = not reader.execute(STORED_HASHES, ([row_id],)).fetchall()
    new = f"{body.strip(WHITESPACE)}\n\nLive edit {n}."
    writer.execute(UPDATE_BODY, (new, row_id))
    return content_hash(new), time.monotonic(), queued


def searchable(reader: psycopg.Connection, pending: dict[int, tuple[bytes, float, bool]]) -> list[Edited]:
    """The pending edits the store now holds (removed from ``pending``)."""
    if not pending:
        return []
    stored: dict[int, bytes] = dict(reader.execute(STORED_HASHES, (list(pending),)).fetchall())
    now, found = time.monotonic(), []
    for row_id, (digest, committed, queued) in list(pending.items()):
        if stored.get(row_id) == digest:
            found.append(Edited(row_id, queued, now - committed))
            del pending[row_id]
        elif now - committed > EDIT_TIMEOUT:
            raise BenchError(f"row {row_id}: edit not searchable within {EDIT_TIMEOUT:.0f}s")
    return found


# The report


def report_progress(m: Measured, runs: int) -> None:
    lat = m.latency_ms
    print(
        f"{m.throttle} run {m.run}/{runs}: backfill {m.quiet_rate:.0f} rows/s before, {m.edit_rate:.0f} during; "
        f"edits p50 {lat['p50']:.0f} ms, p99 {lat['p99']:.0f} ms, max {lat['max']:.0f} ms",
        file=sys.stderr,
        flush=True,
    )


def summary_table(results: list[Measured], throttles: dict[str, str]) -> str:
    headers = ["throttle", "backfill rows/s before edits", "during edits", "during / before",
               "change to searchable p50 ms", "p90 ms", "p99 ms", "max ms"]  # fmt: skip
    rows = []
    for name, described in throttles.items():
        ms = [m for m in results if m.throttle == name]
        lat = [m.latency_ms for m in ms]
        rows.append((
            described, triple([m.quiet_rate for m in ms], 0), triple([m.edit_rate for m in ms], 0),
            triple([m.edit_rate / m.quiet_rate for m in ms], 2, "x"),
            *(triple([x[key] for x in lat], 0) for key in ("p50", "p90", "p99", "max")),
        ))  # fmt: skip
    return markdown_table(headers, rows)


def queued_table(results: list[Measured], throttles: dict[str, str]) -> str:
    """The edits split by whether the edited row was still waiting for its backfill."""
    headers = ["throttle", "edited rows still queued", "their p50 ms", "rows already stored", "their p50 ms"]
    rows = []
    for name, described in throttles.items():
        edits = [e for m in results if m.throttle == name for e in m.edits]
        queued, stored = [e.seconds for e in edits if e.queued], [e.seconds for e in edits if not e.queued]
        p50 = [f"{percentiles_ms(part)['p50']:.0f}" if part else "-" for part in (queued, stored)]
        rows.append((described, str(len(queued)), p50[0], str(len(stored)), p50[1]))
    return markdown_table(headers, rows)


def verdicts(results: list[Measured], throttles: dict[str, str]) -> list[str]:
    lines = []
    for name, described in throttles.items():
        p50 = statistics.median(m.latency_ms["p50"] for m in results if m.throttle == name)
        met = "met" if p50 <= TARGET_P50 * 1000 else "NOT met"
        lines.append(f"- {described}: change to searchable p50 <= {TARGET_P50 * 1000:.0f} ms: {met} (median {p50:.0f})")
    return lines


def print_report(args: argparse.Namespace, results: list[Measured], throttles: dict[str, str], pg: str) -> None:
    print(f"\n## Live edits during a {args.rows:,}-row backfill, {args.runs} runs per throttle\n")
    print(
        f"`syncer run` against FakeOpenAI, dimensions {args.dimensions or 1536}, syncer's defaults otherwise; "
        f"{args.edits} single-row edits, one every {args.interval:g} s, after {args.quiet:g} s of backfill alone; "
        f"{pg}; {cpus()} CPUs.\n"
    )
    print(summary_table(results, throttles), end="\n\n")
    print(queued_table(results, throttles), end="\n\n")
    print("\n".join(verdicts(results, throttles)))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now(UTC)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
    rows = bodies(args.rows)[0]
    results: list[Measured] = []
    throttles: dict[str, str] = {}
    with postgres() as server, ThrottledAPI() as api:
        pg = server_version(server.url)
        with loaded_template(server.url, f"bench_live_template_{os.getpid()}", rows) as template:
            for run in range(1, args.runs + 1):
                for name in args.throttles:
                    throttles[name] = throttle(api, name, args)
                    with fresh_database(server.url, f"bench_live_{os.getpid()}", template) as url:
                        results.append(measure_run(url, api, rows, args, name, run))
                    api.requests.clear()
                    report_progress(results[-1], args.runs)
    print_report(args, results, throttles, pg)
    report = {
        "started": started.isoformat(timespec="seconds"),
        "args": vars(args),
        "postgres": pg,
        "runs": [asdict(m) | {"latency_ms": m.latency_ms} for m in results],
    }
    print(f"\nresults: {write_results('live_edits', report, started)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
