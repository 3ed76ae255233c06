"""Backfill with the real model, whole process: `syncer run --once` against a raw encode, and worker processes.

Every figure is a whole process, spawn to exit, with all-MiniLM-L6-v2 on torch (the packaged
model, offline), on two corpora of real text:

* ``stdlib``: docstrings of Python's standard library (``syncer.demo.corpus``), many of them long.
  The source has ``"chunking": "none"`` so that syncer embeds one text per row, cut to the model's
  input limit as the raw encode cuts it (with the default "auto" the long ones would be split into
  more texts than the baseline encodes);
* ``short``: one-line summaries of the docstrings of sympy, networkx, scipy and scikit-learn (which
  torch and sentence-transformers install), read from their sources with ``ast``: short texts that
  no test of the project uses. The source has syncer's default chunking (every text fits: checked).

Each run, per corpus: the raw baseline (bench/raw_encode.py: load the model, one
``SentenceTransformer.encode`` over all texts, globally length-sorted, batch 16, normalized), then
`syncer run --once` on a fresh copy of the loaded table, then `syncer run --once --processes N` for
each N. The ratio syncer / raw is of rows/s within a run. From the logs and stamps: start-up (spawn
to the first claim, or to the model loaded), the HNSW index built after the backfill, and exit
("queue drained", or the texts encoded, to the process's end).

    python bench/model_backfill.py [--runs 3] [--stdlib-rows 2500] [--short-rows 6000] [--processes 2 auto]

PostgreSQL: SYNCER_BENCH_DATABASE_URL, else a throwaway embedded server.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import logging
import os
import random
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

import wholeprocess
from common import (
    TABLE,
    BenchError,
    bodies,
    cpus,
    embedded_text,
    expected_hashes,
    fresh_database,
    loaded_template,
    markdown_table,
    postgres,
    server_version,
    stored_vectors,
    triple,
    verify_store,
    write_results,
)
from wholeprocess import Phases

BENCH_DIR = Path(__file__).resolve().parent
SHORT_PACKAGES = ("sympy", "networkx", "scipy", "sklearn")
SHORT_CHARS = (20, 200)  # a summary line's length, at least and at most
CHUNKING = {"stdlib": "none", "short": "auto"}
TARGET_RATIO = 0.97  # issue 10: syncer / raw, whole process
ENCODE_BATCH_SIZE = 16  # syncer's default SYNCER_ENCODE_BATCH_SIZE, and the baseline's
WARMUP_TEXTS = 64


@dataclass(frozen=True)
class Raw:
    seconds: float
    startup: float  # spawn to the model loaded
    encode: float
    exit: float  # texts encoded to the process's end


@dataclass(frozen=True)
class Synced:
    processes: str  # as given to --processes
    phases: Phases


@dataclass(frozen=True)
class Measured:
    corpus: str
    run: int
    rows: int
    raw: Raw
    synced: tuple[Synced, ...]  # one process first

    @property
    def one(self) -> Synced:
        return self.synced[0]

    @property
    def ratio(self) -> float:
        """syncer's rows/s over raw's, one process each."""
        return self.raw.seconds / self.one.phases.whole

    def rate(self, synced: Synced) -> float:
        return self.rows / synced.phases.whole


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3, help="runs (default 3)")
    p.add_argument("--stdlib-rows", type=int, default=2500, help="rows of stdlib docstrings (default 2500)")
    p.add_argument("--short-rows", type=int, default=6000, help="rows of short texts (default 6000)")
    p.add_argument(
        "--processes", nargs="*", default=["2", "auto"], help="worker processes compared with one (default 2 auto)"
    )
    p.add_argument("--corpora", nargs="+", choices=list(CHUNKING), default=list(CHUNKING))
    args = p.parse_args(argv)
    if args.runs < 1 or args.stdlib_rows < 1 or args.short_rows < 1:
        p.error("--runs and the rows must be positive")
    args.processes = distinct_processes(args.processes)
    return args


def distinct_processes(wanted: list[str]) -> list[str]:
    """1 first, then the others, ``auto`` left out where it means a count already there (it is said so)."""
    counts = ["1", *(n for n in wanted if n not in ("1", "auto"))]
    if "auto" in wanted and auto_processes() not in counts:
        counts.append("auto")
    return list(dict.fromkeys(counts))


def auto_processes() -> str:
    """What `--processes auto` means for a local model here (syncer/processes.py: a process per CPU)."""
    return str(os.cpu_count() or 1)


# The corpora


def short_texts(limit: int, seed: int = 42) -> list[str]:
    """``limit`` distinct one-line docstring summaries of SHORT_PACKAGES (parsed, never imported), shuffled."""
    seen: dict[str, None] = {}
    for package in SHORT_PACKAGES:
        for path in package_sources(package):
            seen.update(dict.fromkeys(summaries(path)))
        if len(seen) >= 2 * limit:
            break
    texts = list(seen)
    random.Random(seed).shuffle(texts)
    if len(texts) < limit:
        raise BenchError(f"only {len(texts)} short texts in {', '.join(SHORT_PACKAGES)}: fewer --short-rows")
    return texts[:limit]


def package_sources(package: str) -> list[Path]:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return []
    root = Path(next(iter(spec.submodule_search_locations)))
    return sorted(p for p in root.rglob("*.py") if "tests" not in p.relative_to(root).parts)


def summaries(path: Path) -> Iterator[str]:
    """The first paragraph of each docstring in a source file, on one line, if it is short."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node)
            line = " ".join(doc.strip().split("\n\n")[0].split()) if doc else ""
            if SHORT_CHARS[0] <= len(line) <= SHORT_CHARS[1] and " " in line:
                yield line


def corpus_rows(name: str, args: argparse.Namespace) -> list[str]:
    if name == "stdlib":
        rows, distinct = bodies(args.stdlib_rows)
        if distinct < args.stdlib_rows:
            print(f"note: {distinct} distinct docstrings, cycled with a title prefix", file=sys.stderr)
        return rows
    return short_texts(args.short_rows)


# Running


@dataclass(frozen=True)
class Corpus:
    name: str
    rows: list[str]
    texts_file: Path  # the texts syncer embeds, as JSON, for the raw baseline
    template: str  # a database holding the rows


@contextmanager
def corpora(server_url: str, args: argparse.Namespace, tmp: Path) -> Iterator[list[Corpus]]:
    """Each corpus: its rows, its texts in a file, a template database; dropped at the end."""
    with ExitStack() as stack:
        found = []
        for name in args.corpora:
            rows = corpus_rows(name, args)
            texts_file = tmp / f"{name}.json"
            texts_file.write_text(json.dumps([t for body in rows if (t := embedded_text(body))]))
            template = loaded_template(server_url, f"bench_model_template_{os.getpid()}_{name}", rows)
            found.append(Corpus(name, rows, texts_file, stack.enter_context(template)))
        yield found


def raw(texts_file: Path, pg_pid: int | None) -> Raw:
    command = [sys.executable, str(BENCH_DIR / "raw_encode.py"), str(texts_file), str(ENCODE_BATCH_SIZE)]
    run = wholeprocess.run(command, wholeprocess.environment({}), pg_pid)
    loaded, encoded = run.stamp("loaded"), run.stamp("encoded")
    if loaded is None or encoded is None:
        raise BenchError(f"the raw baseline did not say when it loaded and encoded:\n{wholeprocess.tail(run)}")
    return Raw(run.seconds, loaded, encoded - loaded, run.seconds - encoded)


def synced(server_url: str, corpus: Corpus, processes: str, pg_pid: int | None) -> Synced:
    """`syncer run --once --processes N` on a copy of the corpus's table; checks the store."""
    settings = {
        "SYNCER_SOURCES": json.dumps([{"table": TABLE, "columns": ["body"], "chunking": CHUNKING[corpus.name]}]),
        "SYNCER_ENCODE_BATCH_SIZE": str(ENCODE_BATCH_SIZE),
    }
    with fresh_database(server_url, f"bench_model_{os.getpid()}", corpus.template) as url:
        env = wholeprocess.environment(settings | {"SYNCER_DATABASE_URL": url})
        run = wholeprocess.run(wholeprocess.syncer("run", "--once", "--processes", processes), env, pg_pid)
        check_store(url, corpus.rows)
    return Synced(processes, wholeprocess.phases(run))


def check_store(url: str, rows: list[str]) -> None:
    """A vector per row, of its text, and no more (no text was split into chunks)."""
    expected = expected_hashes(rows)
    verify_store(url, expected)
    if stored_vectors(url) != len(expected):
        raise BenchError("some texts were split into chunks: the raw baseline encodes fewer texts than syncer")


def measure(server_url: str, pg_pid: int | None, found: list[Corpus], args: argparse.Namespace) -> list[Measured]:
    results = []
    for run in range(1, args.runs + 1):
        for corpus in found:
            baseline = raw(corpus.texts_file, pg_pid)
            runs = tuple(synced(server_url, corpus, n, pg_pid) for n in args.processes)
            results.append(Measured(corpus.name, run, len(corpus.rows), baseline, runs))
            report_progress(results[-1], args.runs)
    return results


def warm_up(tmp: Path, pg_pid: int | None) -> None:
    """A first load of torch and the model from disk costs more than the runs' own loads: not measured."""
    texts_file = tmp / "warmup.json"
    texts_file.write_text(json.dumps([f"warm-up text number {i}" for i in range(WARMUP_TEXTS)]))
    raw(texts_file, pg_pid)


def report_progress(m: Measured, runs: int) -> None:
    rates = ", ".join(f"{s.processes} processes {m.rate(s):.0f} rows/s" for s in m.synced[1:])
    print(
        f"{m.corpus} run {m.run}/{runs}: raw {m.rows / m.raw.seconds:.1f} rows/s, syncer {m.rate(m.one):.1f} "
        f"(ratio {m.ratio:.3f}){'; ' + rates if rates else ''}",
        file=sys.stderr,
        flush=True,
    )


# The report


def of(results: list[Measured], corpus: str) -> list[Measured]:
    return [m for m in results if m.corpus == corpus]


def median(values: list[float]) -> float:
    return statistics.median(values)


def ratio_table(results: list[Measured], names: list[str]) -> str:
    headers = ["corpus", "rows", "raw rows/s", "syncer rows/s", "syncer / raw",
               "start-up s raw / syncer", "syncer's index s", "exit s raw / syncer"]  # fmt: skip
    rows = []
    for name in names:
        ms = of(results, name)
        rows.append((
            f"{name} ({CHUNKING[name]} chunking)", f"{ms[0].rows:,}", triple([m.rows / m.raw.seconds for m in ms]),
            triple([m.rate(m.one) for m in ms]), triple([m.ratio for m in ms], 3),
            f"{median([m.raw.startup for m in ms]):.2f} / {median([m.one.phases.startup for m in ms]):.2f}",
            triple([m.one.phases.index for m in ms], 1),
            f"{median([m.raw.exit for m in ms]):.2f} / {median([m.one.phases.exit for m in ms]):.2f}",
        ))  # fmt: skip
    return markdown_table(headers, rows)


def time_table(results: list[Measured], names: list[str]) -> str:
    """Where each whole process's time went (medians): the difference is what syncer adds."""
    headers = ["corpus", "process", "start-up s", "encode / store s", "index s", "exit s", "whole s"]
    rows = []
    for name in names:
        ms = of(results, name)
        raw_parts = [median([getattr(m.raw, part) for m in ms]) for part in ("startup", "encode", "exit", "seconds")]
        rows.append((name, "raw", *(f"{v:.2f}" for v in raw_parts[:2]), "-", *(f"{v:.2f}" for v in raw_parts[2:])))
        parts = [median([getattr(m.one.phases, p) for m in ms]) for p in ("startup", "store", "index", "exit", "whole")]
        rows.append((name, "syncer", *(f"{v:.2f}" for v in parts)))
    return markdown_table(headers, rows)


def processes_table(results: list[Measured], names: list[str]) -> str:
    headers = ["corpus", "processes", "rows/s (whole process)", "vs one process (same run)", "start-up s", "index s"]
    rows = []
    for name in names:
        ms = of(results, name)
        for i, s in enumerate(ms[0].synced):
            label = s.processes + (f" (= {auto_processes()})" if s.processes == "auto" else "")
            rows.append((
                name, label, triple([m.rate(m.synced[i]) for m in ms]),
                triple([m.one.phases.whole / m.synced[i].phases.whole for m in ms], 2, "x"),
                f"{median([m.synced[i].phases.startup for m in ms]):.2f}",
                f"{median([m.synced[i].phases.index for m in ms]):.1f}",
            ))  # fmt: skip
    return markdown_table(headers, rows)


def print_report(args: argparse.Namespace, results: list[Measured], pg: str) -> None:
    names = list(dict.fromkeys(m.corpus for m in results))
    print(f"\n## Model backfill, whole process: all-MiniLM-L6-v2 on torch, {args.runs} runs\n")
    auto = f"`--processes auto` is {auto_processes()} here" + (" (the row of that count)" if "auto" not in
                                                                  args.processes else "")  # fmt: skip
    print(f"Encode batch {ENCODE_BATCH_SIZE}; {pg}; {cpus()} CPUs; {auto}.\n")
    print(ratio_table(results, names), end="\n\n")
    print(time_table(results, names), end="\n\n")
    if len(args.processes) > 1:
        print(processes_table(results, names), end="\n\n")
    for name in names:
        ratio = median([m.ratio for m in of(results, name)])
        met = "met" if ratio >= TARGET_RATIO else "NOT met"
        print(f"- {name}: syncer / raw >= {TARGET_RATIO}: {met} (median {ratio:.3f})")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now(UTC)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
    with postgres() as server, tempfile.TemporaryDirectory(prefix="syncer-bench-model-") as tmp:
        pg = server_version(server.url)
        with corpora(server.url, args, Path(tmp)) as found:
            warm_up(Path(tmp), server.pid)
            results = measure(server.url, server.pid, found, args)
    print_report(args, results, pg)
    report: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "args": vars(args),
        "postgres": pg,
        "runs": [asdict(m) | {"ratio": m.ratio} for m in results],
    }
    print(f"\nresults: {write_results('model_backfill', report, started)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
