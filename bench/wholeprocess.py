"""A whole `syncer` process, timed from spawn to exit: what its log said when, and the CPU it used.

Each line the child writes to stderr is stamped with its arrival (seconds since spawn). syncer's
INFO lines mark the phases of `syncer run --once`: start-up until "syncing ...", then claim,
embed and settle until the deferred HNSW index build begins ("built hnsw index ... in X s" is logged
at its end), then "queue drained", then exit. A child may also print ``bench-stamp NAME T`` lines,
T its ``time.monotonic()`` (one clock for every process on Linux), for moments it logs nothing about.
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from common import BenchError, cpu_counters, cpus, server_processes, wait_for_exits

SYNCING = re.compile(r" syncer: syncing ")
QUEUED = re.compile(r": (\d+) rows queued$")
INDEX = re.compile(r"built hnsw index .* in ([\d.]+)s$")
PROGRESS = re.compile(r"syncing \S+: (\d+)/(\d+) rows")
DRAINED = re.compile(r" syncer: queue drained$")
STAMP = re.compile(r"^bench-stamp (\S+) ([\d.]+)$")
FAKE_API_KEY = "sk-fake-7f3a9c"  # masked in syncer's log: must not be a word the log otherwise holds
STOP_TIMEOUT = 60.0  # seconds for a stopped child to finish its batch and exit
TAIL_LINES = 20  # of the child's log, in an error


@dataclass(frozen=True)
class Line:
    at: float  # seconds from spawn to the line's arrival
    text: str


@dataclass(frozen=True)
class Usage:
    """CPU seconds while a child ran: its own (children included), the database's, the measuring process's."""

    child: float
    postgres: float | None  # None: the server does not run here
    own: float  # this process: a fake API server in a thread of it, say
    others: float  # share of all CPUs used by everything else on the machine


@dataclass(frozen=True)
class Finished:
    seconds: float  # spawn to exit
    returncode: int
    lines: tuple[Line, ...]
    usage: Usage

    def first(self, pattern: re.Pattern[str]) -> Line | None:
        return next((line for line in self.lines if pattern.search(line.text)), None)

    def last(self, pattern: re.Pattern[str]) -> Line | None:
        return next((line for line in reversed(self.lines) if pattern.search(line.text)), None)

    def stamp(self, name: str) -> float | None:
        """When the child said it reached ``name`` (a bench-stamp), in seconds from spawn."""
        return next((line.at for line in self.lines if line.text.startswith(f"bench-stamp {name} ")), None)


@dataclass(frozen=True)
class Phases:
    """Where a `syncer run --once` backfill's time went, in seconds."""

    whole: float  # spawn to exit
    startup: float  # spawn to "syncing": imports, settings, provider, apply (migrate, DDL, backfill queued)
    store: float  # "syncing" to the last vector stored: claim, embed, settle
    index: float  # the HNSW index built after the backfill (0: none built then)
    exit: float  # "queue drained" to exit

    @property
    def other(self) -> float:
        """Between the index and "queue drained" (or the last stored vector and it)."""
        return self.whole - self.startup - self.store - self.index - self.exit


def phases(run: Finished) -> Phases:
    """The phases of a backfill, from its log (several processes: the first start, the last drain)."""
    syncing, drained, index = run.first(SYNCING), run.last(DRAINED), run.last(INDEX)
    if syncing is None or drained is None:
        raise BenchError(f"syncer never started or never drained its queue:\n{tail(run)}")
    if index is not None and index.at < syncing.at:
        index = None  # built by apply, on an empty store: the backfill maintains it
    match = INDEX.search(index.text) if index else None
    index_seconds = float(match.group(1)) if match else 0.0
    stored_at = index.at - index_seconds if index else drained.at
    return Phases(run.seconds, syncing.at, stored_at - syncing.at, index_seconds, run.seconds - drained.at)


def tail(run: Finished) -> str:
    return "\n".join(line.text for line in run.lines[-TAIL_LINES:])


class Child:
    """A subprocess whose stderr lines are collected, stamped with their arrival, as they come."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            args, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        self.lines: list[Line] = []
        self._arrived = threading.Condition()
        self._reader = threading.Thread(target=self._read, name="bench-child-log", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for text in self.process.stderr:
            line = self._line(text.rstrip("\n"))
            with self._arrived:
                self.lines.append(line)
                self._arrived.notify_all()

    def _line(self, text: str) -> Line:
        """Stamped on arrival; a bench-stamp line carries its own moment."""
        match = STAMP.match(text)
        at = float(match.group(2)) if match else time.monotonic()
        return Line(at - self.started, text)

    def wait_for(self, pattern: re.Pattern[str], timeout: float) -> Line:
        """The first line that matches, waiting up to ``timeout`` seconds for it."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while True:
                found = next((line for line in self.lines if pattern.search(line.text)), None)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0 or self.process.poll() is not None:
                    raise BenchError(f"no line matching {pattern.pattern!r}:\n{self.tail()}")
                self._arrived.wait(min(left, 0.5))

    def wait(self) -> tuple[int, float]:
        """The exit code, and seconds from spawn to exit."""
        code = self.process.wait()
        ended = time.monotonic()
        self._reader.join()
        return code, ended - self.started

    def stop(self) -> tuple[int, float]:
        """SIGTERM (syncer finishes the batch in hand), then wait."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
        return self.wait()

    def tail(self) -> str:
        with self._arrived:
            return "\n".join(line.text for line in self.lines[-TAIL_LINES:])


@dataclass
class _Meter:
    """CPU counters at the start of a measurement."""

    pg_pid: int | None
    processes: int = 0
    counters: tuple[float, float, float] = (0.0, 0.0, 0.0)
    children: float = 0.0
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.processes = server_processes(self.pg_pid)
        self.counters = cpu_counters(self.pg_pid)
        self.children = children_cpu()

    def usage(self) -> Usage:
        wait_for_exits(self.pg_pid, self.processes)
        after, elapsed = cpu_counters(self.pg_pid), time.monotonic() - self.started
        busy, own, pg = (b - a for a, b in zip(self.counters, after, strict=True))
        child = children_cpu() - self.children
        others = max(0.0, busy - own - pg - child) / (elapsed * cpus())
        return Usage(child, pg if self.pg_pid is not None else None, own, others)


def children_cpu() -> float:
    """CPU seconds of this process's waited-for children (and theirs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@contextmanager
def running(args: list[str], env: dict[str, str]) -> Iterator[Child]:
    """A child for the block (stopped at its end if still running)."""
    child = Child(args, env)
    try:
        yield child
    finally:
        if child.process.poll() is None:
            child.stop()


def run(args: list[str], env: dict[str, str], pg_pid: int | None) -> Finished:
    """Run a child to its exit; fails unless it exits 0."""
    meter = _Meter(pg_pid)
    child = Child(args, env)
    code, seconds = child.wait()
    finished = Finished(seconds, code, tuple(child.lines), meter.usage())
    if code != 0:
        raise BenchError(f"{' '.join(args[:4])} ... exited {code}:\n{tail(finished)}")
    return finished


def syncer(*args: str, python: tuple[str, ...] = ()) -> list[str]:
    """The command line of ``syncer ARGS`` in this interpreter (``python``: its options, e.g. -X importtime)."""
    return [sys.executable, *python, "-m", "syncer", *args]


def openai_settings(table: str, base_url: str, dimensions: int) -> dict[str, str]:
    """SYNCER_* settings of a source ``table`` (column body) embedded through an OpenAI-compatible server."""
    settings = {
        "SYNCER_SOURCES": json.dumps([{"table": table, "columns": ["body"]}]),
        "SYNCER_PROVIDER": "openai",
        "SYNCER_OPENAI_BASE_URL": base_url,
        "SYNCER_OPENAI_API_KEY": FAKE_API_KEY,
    }
    return settings | ({"SYNCER_DIMENSIONS": str(dimensions)} if dimensions else {})


def environment(settings: dict[str, str]) -> dict[str, str]:
    """This process's environment with ``settings`` (SYNCER_* variables) on top; offline for models."""
    return os.environ | {"HF_HUB_OFFLINE": "1"} | settings
