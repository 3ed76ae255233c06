"""Backfill throughput of syncer with chunking, on long texts, against raw encoding of the same chunks.

The texts are whole source files of Python's standard library (2,000 to 50,000 characters, every
one over MiniLM's 256-token input, so every one is split). Each run loads them into a fresh
database, then times

* chunking: the texts split with the chunker syncer uses (``syncer.chunking.chunker``);
* raw: one ``provider.embed_documents`` call over all those chunks (sorted by length as a whole);
* syncer: ``schema.apply`` + ``Worker.run(once=True)``, i.e. ``syncer run --once`` on a new source
  with ``"chunking": "auto"`` (it splits, embeds and stores), checked against the table afterwards:
  every row's chunks as the chunker makes them, each with the raw vector of that chunk.

Both share one process and one loaded model, so their ratio holds where absolute timings drift.

    python bench/chunked_backfill.py [--texts 32] [--runs 3]

PostgreSQL: SYNCER_BENCH_DATABASE_URL (a fresh database is created in it per run), else a
throwaway embedded server. Other SYNCER_* variables (e.g. SYNCER_BATCH_SIZE) apply to syncer.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import sysconfig
import time
import warnings
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import psycopg
import torch

from syncer import chunking
from syncer.fragments import WHITESPACE
from syncer.providers import load_provider
from syncer.providers.sentence_transformers import SentenceTransformerProvider
from syncer.report import format_table
from syncer.settings import Settings, SourceConfig

from backfill import BUSY_OTHERS, Span, span, time_syncer
from common import (
    RESULTS_DIR,
    TABLE,
    BenchError,
    Server,
    content_hash,
    fresh_database,
    load_table,
    postgres,
    spread,
)

MIN_CHARS, MAX_CHARS = 2_000, 50_000  # long texts: every one is over MiniLM's 256-token input
SKIPPED_DIRS = {"test", "tests", "idlelib", "site-packages", "lib2to3", "__pycache__"}
WARMUP_CHUNKS = 64
MIN_COSINE = 0.999  # a stored vector against the raw one of its chunk (batch padding moves the last digits)

STORED = (
    "SELECT id, chunk, chunk_start, chunk_end, chunk_text, content_hash, embedding::real[] "
    "FROM public.bench_docs_embeddings ORDER BY id, chunk"
)


@dataclass(frozen=True)
class Run:
    run: int
    rows: int
    chunks: int
    chunking_seconds: float
    raw: Span
    syncer: Span
    apply_seconds: float

    @property
    def raw_rate(self) -> float:
        """Chunks per second of the raw encode alone."""
        return self.chunks / self.raw.seconds

    @property
    def syncer_rate(self) -> float:
        return self.chunks / self.syncer.seconds

    @property
    def ratio(self) -> float:
        """syncer against the raw encode (chunking not counted in raw)."""
        return self.syncer_rate / self.raw_rate

    @property
    def ratio_with_chunking(self) -> float:
        """syncer against chunking + raw encode: what syncer adds beyond the work itself."""
        return (self.chunking_seconds + self.raw.seconds) / self.syncer.seconds

    @property
    def chunking_share(self) -> float:
        """Chunking's time as a share of encoding the chunks."""
        return self.chunking_seconds / self.raw.seconds

    @property
    def others(self) -> float:
        return max(self.raw.others, self.syncer.others)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--texts", type=int, default=32, help="long texts (source files) to backfill (default 32)")
    p.add_argument("--runs", type=int, default=3, help="backfill runs (default 3)")
    args = p.parse_args(argv)
    if args.texts < 1 or args.runs < 1:
        p.error("--texts and --runs must be positive")
    return args


# The texts


def stdlib_files() -> list[str]:
    """The trimmed text of every standard library source file of MIN_CHARS to MAX_CHARS characters, by path."""
    root = Path(sysconfig.get_paths()["stdlib"])
    texts = []
    for path in sorted(root.rglob("*.py")):
        if SKIPPED_DIRS.intersection(path.relative_to(root).parts):
            continue
        try:
            text = path.read_text(encoding="utf-8").strip(WHITESPACE)
        except (UnicodeDecodeError, OSError):
            continue
        if MIN_CHARS <= len(text) <= MAX_CHARS and "\x00" not in text:
            texts.append(text)
    return texts


def long_texts(count: int) -> tuple[list[str], int]:
    """``count`` texts spread evenly over the corpus's lengths (shortest to longest), and the corpus's size."""
    corpus = sorted(stdlib_files(), key=len)
    if count > len(corpus):
        raise BenchError(f"--texts {count}: the standard library has {len(corpus)} files of that length")
    step = (len(corpus) - 1) / max(count - 1, 1)
    return [corpus[round(i * step)] for i in range(count)], len(corpus)


# The measurements


def split_all(chunker: chunking.Chunker, texts: list[str]) -> tuple[list[list[chunking.Chunk]], float]:
    """Each text's chunks, and the seconds it took to split them all."""
    start = time.perf_counter()
    split = [chunker.split(text) for text in texts]
    return split, time.perf_counter() - start


def chunk_texts(texts: list[str], split: list[list[chunking.Chunk]]) -> list[str]:
    """The texts the model embeds, in row then chunk order (a chunk of None text is its whole row)."""
    return [
        text if chunk.text is None else chunk.text
        for text, chunks in zip(texts, split, strict=True)
        for chunk in chunks
    ]


def time_raw(provider: SentenceTransformerProvider, texts: list[str], pg_pid: int | None) -> tuple[Span, np.ndarray]:
    with span(pg_pid) as measured:
        vectors = provider.embed_documents(texts)
    return measured[0], vectors


def verify_store(url: str, texts: list[str], split: list[list[chunking.Chunk]], vectors: np.ndarray) -> None:
    """Every row's chunks as the chunker makes them, with its text's hash and the raw vector of each chunk."""
    expected = [
        (row_id, number, chunk.start, chunk.end, chunk.text, content_hash(text))
        for row_id, (text, chunks) in enumerate(zip(texts, split, strict=True), 1)
        for number, chunk in enumerate(chunks)
    ]
    with psycopg.connect(url) as conn:
        stored = conn.execute(STORED).fetchall()
    if [tuple(row[:6]) for row in stored] != expected:
        raise BenchError(f"store holds {len(stored)} chunks, not the chunker's {len(expected)} (or other ones)")
    cosines = np.sum(np.asarray([row[6] for row in stored], dtype=np.float32) * vectors, axis=1)
    if cosines.min() < MIN_COSINE:
        raise BenchError(f"a stored vector is not its chunk's: cosine {cosines.min():.4f} to the raw one")


def measure_run(
    run: int,
    settings: Settings,
    provider: SentenceTransformerProvider,
    url: str,
    pg_pid: int | None,
    texts: list[str],
) -> Run:
    load_table(url, texts)
    split, chunking_seconds = split_all(chunking.chunker(settings.sources[0], provider), texts)
    chunks = chunk_texts(texts, split)
    raw, vectors = time_raw(provider, chunks, pg_pid)
    synced, apply_seconds = time_syncer(settings, provider, url, pg_pid)
    verify_store(url, texts, split, vectors)
    return Run(run, len(texts), len(chunks), chunking_seconds, raw, synced, apply_seconds)


# The report


def context(settings: Settings, provider: SentenceTransformerProvider, server: Server) -> dict[str, Any]:
    with psycopg.connect(server.url) as conn:
        version = conn.execute("SHOW server_version").fetchone()
    return {
        "cpus": psutil.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "model": provider.model_id,
        "max_input_tokens": provider.max_input_tokens,
        "encode_batch_size": provider.batch_size,
        "claim_window": settings.batch_size,
        "index_after_rows": settings.index_after_rows,
        "postgres": f"{version[0] if version else '?'}, {server.kind}",
    }


def print_context(info: dict[str, Any], texts: list[str], corpus_size: int, runs: int) -> None:
    lengths = sorted(map(len, texts))
    print(
        f"syncer chunked backfill benchmark: {len(texts)} stdlib source files of {corpus_size} "
        f"({MIN_CHARS:,}-{MAX_CHARS:,} chars), {runs} run{'s' if runs != 1 else ''}"
    )
    print(f"  text chars: min {lengths[0]:,}, median {statistics.median(lengths):,.0f}, max {lengths[-1]:,}")
    print(f"  cpus {info['cpus']}, torch {info['torch']} with {info['torch_threads']} threads")
    print(
        f"  model {info['model']} ({info['max_input_tokens']}-token input), encode batch size "
        f"{info['encode_batch_size']}, chunking auto"
    )
    print(f"  claim window {info['claim_window']} rows, index_after_rows {info['index_after_rows']}")
    print(f"  postgres {info['postgres']}")


def run_cells(r: Run) -> tuple[str, ...]:
    pg = "-" if r.syncer.postgres_cpu is None else f"{r.syncer.postgres_cpu:.1f}"
    return (
        str(r.run),
        str(r.chunks),
        f"{r.chunking_seconds:.2f}",
        f"{r.raw_rate:.1f}",
        f"{r.syncer_rate:.1f}",
        f"{r.rows / r.syncer.seconds:.2f}",
        f"{r.ratio:.3f}",
        f"{r.ratio_with_chunking:.3f}",
        f"{r.apply_seconds:.2f}",
        pg,
        f"{100 * r.others:.0f}",
    )


SUMMARY = (  # label, Run attribute, digits
    ("raw chunks/s", "raw_rate", 1),
    ("syncer chunks/s", "syncer_rate", 1),
    ("ratio (syncer / raw encode)", "ratio", 3),
    ("ratio (syncer / chunking + raw encode)", "ratio_with_chunking", 3),
    ("chunking / raw encode", "chunking_share", 3),
)


def print_runs(runs: list[Run]) -> None:
    headers = [
        "run", "chunks", "chunking s", "raw chunks/s", "syncer chunks/s", "syncer rows/s",
        "ratio", "ratio incl. chunking", "apply s", "postgres cpu s", "other cpu %",
    ]  # fmt: skip
    print()
    print(format_table(headers, [run_cells(r) for r in runs]))
    print()
    rows = [
        (label, *(f"{v:.{digits}f}" for v in spread([getattr(r, name) for r in runs]).values()))
        for label, name, digits in SUMMARY
    ]
    print(format_table(["", "min", "median", "max"], rows))
    busiest = max(r.others for r in runs)
    if busiest > BUSY_OTHERS:
        print(
            f"\nwarning: other processes used up to {100 * busiest:.0f}% of the CPUs during the runs; "
            "rates and ratios are unreliable: rerun on a quiet machine"
        )


def write_results(report: dict[str, Any], started: datetime) -> Path:
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"chunked-backfill-{started:%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now(UTC)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
    texts, corpus_size = long_texts(args.texts)
    runs: list[Run] = []
    with postgres() as server:
        # database_url only names the server: each run connects to its own fresh database.
        settings = Settings(database_url=server.url, sources=[SourceConfig(table=TABLE, columns=("body",))])
        provider = load_provider(settings)
        if not isinstance(provider, SentenceTransformerProvider):
            raise BenchError("the raw baseline needs the sentence-transformers provider")
        info = context(settings, provider, server)
        print_context(info, texts, corpus_size, args.runs)
        warmup, _ = split_all(chunking.chunker(settings.sources[0], provider), texts[:1])
        provider.embed_documents(chunk_texts(texts[:1], warmup)[:WARMUP_CHUNKS])  # first-call costs
        for n in range(1, args.runs + 1):
            with fresh_database(server.url, f"syncer_bench_{os.getpid()}_{n}") as url:
                runs.append(measure_run(n, settings, provider, url, server.pid, texts))
            print(f"run {n}/{args.runs}: ratio {runs[-1].ratio:.3f}", file=sys.stderr, flush=True)
    print_runs(runs)
    report: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "args": vars(args),
        "context": info,
        "runs": [asdict(r) | {name: getattr(r, name) for _, name, _ in SUMMARY} for r in runs],
        "summary": {name: spread([getattr(r, name) for r in runs]) for _, name, _ in SUMMARY},
    }
    print(f"\nresults: {write_results(report, started)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
