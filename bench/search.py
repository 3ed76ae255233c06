"""Search latency (p50/p99) and recall@10 against exact search at 100,000 rows: vector, chunked and hybrid search.

Two sources of ``--rows`` rows each are loaded straight into the tables syncer creates, with no
model pass over them (embedding 100,000 rows would take hours on a CPU):

* ``bench_plain`` (``"chunking": "none"``): one vector per row;
* ``bench_chunked`` (``"chunking": "auto"``): every row 2 to 4 chunks (passages), a vector each.

Vectors are realistic, not random: MiniLM embeddings of real texts (docstrings of Python's standard
library), each row a copy of one (a chunk: of one passage) plus Gaussian noise of norm ``--noise``,
renormalized, so the data is clustered as real embeddings are. Each row's text is its texts', so
the full-text index holds real words. ``schema.apply`` creates the queue, store, triggers and search
functions over the loaded tables; the store rows are then copied in (chunk, offsets, content_hash,
model and fts as the worker writes them), the queue emptied, and the HNSW index built the way the
workers build it, with ``maintenance_work_mem`` raised.

Queries are held-out docstrings: the first paragraph of each, embedded with the model's query
embedding, and its first two words of four letters or more as the hybrid query text (the whole
sentence would mostly match no chunk: ``websearch_to_tsquery`` ANDs its words). Each query is run
through ``syncer.search.top`` (what ``Searcher`` and ``syncer serve`` run, with
``hnsw.iterative_scan = relaxed_order``) for three kinds:

* vector: ``syncer.search_bench_plain``;
* chunked: ``syncer.search_bench_chunked`` (rows by their best chunk);
* hybrid: ``syncer.hybrid_search_bench_chunked``.

Recall@10 is against the same call with the index disabled (``SET enable_indexscan = off``: a
sequential scan ranks every vector exactly; for hybrid, the same fusion over exact vector ranks).
Latencies are timed at ``hnsw.ef_search`` 40 (pgvector's default) and 100, every run going over all
queries with the kinds interleaved. One query of each kind is also run under EXPLAIN ANALYZE: whether
the HNSW index serves it, and how many rows of the source table it reads.

    python bench/search.py [--rows 100000] [--queries 200] [--runs 3]

PostgreSQL: SYNCER_BENCH_DATABASE_URL (a fresh database is created in it), else a throwaway
embedded server. Connections never prepare statements (a prepared plan would be kept after five runs).
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import os
import re
import statistics
import sys
import sysconfig
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import psycopg
from psycopg import sql

from syncer import catalog, fragments, schema, search
from syncer.database import Database, transaction
from syncer.fragments import PARAGRAPH, WHITESPACE
from syncer.indexing import Indexing
from syncer.providers import Provider, load_provider
from syncer.report import format_table
from syncer.settings import Settings, SourceConfig
from syncer.sources import Source

from backfill import BUSY_OTHERS, Span, span
from common import (
    RESULTS_DIR,
    BenchError,
    Server,
    fresh_database,
    percentiles_ms,
    postgres,
    spread,
)

PLAIN = SourceConfig(table="public.bench_plain", columns=("body",), chunking="none")
CHUNKED = SourceConfig(table="public.bench_chunked", columns=("body",))
MIN_CHUNKS, MAX_CHUNKS = 2, 4  # passages per row of the chunked source
MIN_CHARS, MAX_CHARS = 40, 500  # docstrings used: real sentences, each well within the model's input
SKIPPED_DIRS = {"test", "tests", "idlelib", "site-packages", "lib2to3", "__pycache__"}
K = 10
KEYWORDS, KEYWORD_LETTERS = 2, 4  # a whole sentence as hybrid query text matches no chunk: its words are ANDed
EF_SEARCH = (40, 100)  # pgvector's default, and one higher
MAINTENANCE_WORK_MEM = "1GB"  # the HNSW graph is built in memory when it fits
SEED = 9

CREATE_TABLE = "CREATE TABLE {table} (id bigint PRIMARY KEY, body text NOT NULL)"
COPY_ROWS = "COPY {table} (id, body) FROM STDIN"
CREATE_STAGING = (
    "CREATE TEMP TABLE staging (id bigint, chunk integer, chunk_start integer, chunk_end integer, "
    "chunk_text text, embedding {vector}({dimensions})) ON COMMIT DROP"
)
COPY_STAGING = "COPY staging FROM STDIN (FORMAT BINARY)"
STAGING_TYPES = ["int8", "int4", "int4", "int4", "text", "vector"]
# What the worker's settle writes (syncer/sql/queue.sql, "store"): the whole text's hash, the chunk's tsvector.
STORE_ROWS = """
INSERT INTO {store} (id, chunk, chunk_start, chunk_end, chunk_text, embedding, content_hash, model, fts)
SELECT s.id, s.chunk, s.chunk_start, s.chunk_end, s.chunk_text, s.embedding, sha256(convert_to(t.body, 'UTF8')),
       %(model)s, to_tsvector({config}, coalesce(s.chunk_text, t.body))
FROM staging s JOIN {table} t ON t.id = s.id
"""
EMPTY_QUEUE = "TRUNCATE {queue}"
COUNT_MATCHES = "SELECT count(*) FROM {store} WHERE fts @@ websearch_to_tsquery({config}, %s)"
EXPLAIN = "EXPLAIN (ANALYZE, FORMAT JSON) {call}"
CALLS = {
    False: "SELECT * FROM {function}(%(embedding)s, %(k)s)",
    True: "SELECT * FROM {function}(%(text)s, %(embedding)s, %(k)s)",
}


@dataclass(frozen=True)
class Kind:
    name: str
    config: SourceConfig
    hybrid: bool
    label: str  # in the README summary


KINDS = (
    Kind("vector", PLAIN, False, "vector (`chunking: none`)"),
    Kind("chunked", CHUNKED, False, f"chunked ({MIN_CHUNKS}–{MAX_CHUNKS} chunks a row)"),
    Kind("hybrid", CHUNKED, True, "hybrid (same chunked source)"),
)


Chunk = tuple[int, int, int, int, str | None]  # a store row: id, chunk, start, end, text (None: the whole row)


@dataclass(frozen=True)
class Query:
    text: str  # a held-out docstring's first paragraph, embedded
    words: str  # its first KEYWORDS words of KEYWORD_LETTERS letters or more: hybrid search's query text
    embedding: np.ndarray


@dataclass(frozen=True)
class Rows:
    """A source's rows and their store rows (chunks), before loading."""

    bodies: list[str]  # row id i + 1's text
    chunks: list[Chunk]
    vectors: np.ndarray  # one per chunk
    origins: np.ndarray  # the real text each chunk's vector was made from
    base: np.ndarray  # the real texts' own vectors


@dataclass(frozen=True)
class Loaded:
    """What loading a source cost and left."""

    rows: int
    vectors: int
    index_seconds: float


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=100_000, help="rows per source (default 100000)")
    p.add_argument("--queries", type=int, default=200, help="held-out queries (default 200)")
    p.add_argument("--texts", type=int, default=5000, help="real texts the rows are made from (default 5000)")
    p.add_argument("--noise", type=float, default=0.6, help="norm of the noise added to each vector (default 0.6)")
    p.add_argument("--runs", type=int, default=3, help="timed passes over the queries (default 3)")
    p.add_argument("--m", type=int, default=16, help="the HNSW graph's m (SYNCER_INDEX_M, default 16)")
    p.add_argument(
        "--ef-construction", type=int, default=64, help="the HNSW build's SYNCER_INDEX_EF_CONSTRUCTION (default 64)"
    )
    args = p.parse_args(argv)
    if min(args.rows, args.queries, args.texts, args.runs) < 1 or args.noise < 0:
        p.error("--rows, --queries, --texts and --runs must be positive, --noise not negative")
    return args


# The texts and vectors


def docstrings() -> list[str]:
    """Distinct docstrings of MIN_CHARS to MAX_CHARS characters in the standard library's sources, in file order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    found: dict[str, None] = {}
    for path in sorted(root.rglob("*.py")):
        if SKIPPED_DIRS.intersection(path.relative_to(root).parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = (ast.get_docstring(node) or "").strip(WHITESPACE)
                if MIN_CHARS <= len(doc) <= MAX_CHARS and "\x00" not in doc:
                    found[doc] = None
    return list(found)


def split_texts(texts: int, queries: int) -> tuple[list[str], list[str]]:
    """``texts`` docstrings for the rows, and ``queries`` others held out, spread over the corpus."""
    docs = docstrings()
    if texts + queries > len(docs):
        raise BenchError(f"--texts + --queries: the standard library has {len(docs)} docstrings to use")
    step = len(docs) / queries
    held = {int(i * step) for i in range(queries)}
    return [d for i, d in enumerate(docs) if i not in held][:texts], [docs[i] for i in sorted(held)]


def make_query(doc: str, provider: Provider) -> Query:
    """A query from a held-out docstring: its first paragraph, on one line, and a few of its words."""
    text = " ".join(doc.split(PARAGRAPH)[0].split())
    words = [word for word in re.findall(r"[^\W\d_]+", text) if len(word) >= KEYWORD_LETTERS][:KEYWORDS]
    return Query(text, " ".join(words), np.asarray(provider.embed_query(text), dtype=np.float32))


def perturbed(vectors: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    """Each vector plus Gaussian noise of norm about ``noise``, renormalized."""
    jitter = rng.standard_normal(vectors.shape, dtype=np.float32) * (noise / np.sqrt(vectors.shape[1]))
    moved = vectors + jitter
    return moved / np.linalg.norm(moved, axis=1, keepdims=True)


def plain_rows(texts: list[str], vectors: np.ndarray, rows: int, noise: float, rng: np.random.Generator) -> Rows:
    """One text per row, its vector a noisy copy of the text's."""
    origins = rng.integers(0, len(texts), rows)
    chunks: list[Chunk] = [(i + 1, 0, 0, len(texts[o]), None) for i, o in enumerate(origins)]
    return Rows([texts[o] for o in origins], chunks, perturbed(vectors[origins], noise, rng), origins, vectors)


def chunked_rows(texts: list[str], vectors: np.ndarray, rows: int, noise: float, rng: np.random.Generator) -> Rows:
    """Rows of MIN_CHUNKS to MAX_CHUNKS consecutive docstrings (one module's, mostly), each docstring a chunk."""
    bodies: list[str] = []
    chunks: list[Chunk] = []
    origins: list[int] = []
    for row_id, (first, count) in enumerate(
        zip(rng.integers(0, len(texts), rows), rng.integers(MIN_CHUNKS, MAX_CHUNKS + 1, rows), strict=True), 1
    ):
        picked = [(first + n) % len(texts) for n in range(count)]
        start = 0
        for number, origin in enumerate(picked):
            chunks.append((row_id, number, start, start + len(texts[origin]), texts[origin]))
            start += len(texts[origin]) + len(PARAGRAPH)
        bodies.append(PARAGRAPH.join(texts[o] for o in picked))
        origins += picked
    found = np.asarray(origins)
    return Rows(bodies, chunks, perturbed(vectors[found], noise, rng), found, vectors)


# The database


def load_table(conn: psycopg.Connection, config: SourceConfig, bodies: list[str]) -> None:
    table = sql.Identifier(*config.table.split("."))
    conn.execute(sql.SQL(CREATE_TABLE).format(table=table))
    with conn.cursor().copy(sql.SQL(COPY_ROWS).format(table=table)) as copy:
        for row_id, body in enumerate(bodies, 1):
            copy.write_row((row_id, body))


def load_store(conn: psycopg.Connection, source: Source, rows: Rows, model_id: str) -> None:
    """The store rows the worker would have written, and no queue left: the backfill is done."""
    vector = fragments.vector_parts(source.vector_schema)["vector"]
    with transaction(conn):
        conn.execute(sql.SQL(CREATE_STAGING).format(vector=vector, dimensions=sql.Literal(rows.vectors.shape[1])))
        with conn.cursor().copy(COPY_STAGING) as copy:
            copy.set_types(STAGING_TYPES)
            for chunk, embedding in zip(rows.chunks, rows.vectors, strict=True):
                copy.write_row((*chunk, embedding))
        config = sql.Literal(source.config.search_config)
        insert = sql.SQL(STORE_ROWS).format(store=source.store, table=source.table, config=config)
        conn.execute(insert, {"model": model_id})
        conn.execute(sql.SQL(EMPTY_QUEUE).format(queue=source.queue))


def build_index(conn: psycopg.Connection, source: Source, indexing: Indexing) -> float:
    """The store's HNSW index, built as the workers build it after a backfill; returns its seconds."""
    start = time.perf_counter()
    with transaction(conn):
        if not indexing.build(conn, source):
            raise BenchError(f"{source.qualified_store}: the HNSW index was not built")
    return time.perf_counter() - start


def load(db: Database, settings: Settings, provider: Provider, data: dict[str, Rows]) -> dict[str, Loaded]:
    """Tables, syncer's objects over them, the stores filled and indexed; what each source holds."""
    with db.connect() as conn:
        for config in settings.sources:
            load_table(conn, config, data[config.source_name].bodies)
    schema.apply(db, settings, provider)  # queues every row: the store is filled below, the queue emptied
    loaded: dict[str, Loaded] = {}
    with db.connect() as conn:
        for config in settings.sources:
            source = catalog.resolve(conn, config)
            rows = data[config.source_name]
            load_store(conn, source, rows, provider.model_id)
            conn.execute(sql.SQL("VACUUM ANALYZE {}").format(source.table))
            conn.execute(sql.SQL("VACUUM ANALYZE {}").format(source.store))
            seconds = build_index(conn, source, Indexing.from_settings(settings))
            loaded[config.source_name] = Loaded(len(rows.bodies), len(rows.chunks), seconds)
            progress(
                f"{config.source_name}: loaded, HNSW index built in {loaded[config.source_name].index_seconds:.1f}s"
            )
    return loaded


# The searches


def top_ids(conn: psycopg.Connection, source: Source, kind: Kind, query: Query) -> list[int]:
    """The keys of the K rows the kind's search function returns, best first (syncer's client path)."""
    headers, rows = search.top(conn, source, query.embedding, K, None, query.words if kind.hybrid else None)
    key = headers.index("id")
    return [row[key] for row in rows]


def exact_search(
    db: Database, sources: dict[str, Source], queries: list[Query]
) -> tuple[dict[str, list[list[int]]], dict[str, list[float]]]:
    """Each kind's rows for each query with the index disabled, and the seconds each call took."""
    found: dict[str, list[list[int]]] = {kind.name: [] for kind in KINDS}
    seconds: dict[str, list[float]] = {kind.name: [] for kind in KINDS}
    with db.connect() as conn:
        conn.execute("SET enable_indexscan = off")  # no HNSW: a sequential scan ranks every vector
        for query in queries:
            for kind in KINDS:
                start = time.perf_counter()
                found[kind.name].append(top_ids(conn, sources[kind.config.source_name], kind, query))
                seconds[kind.name].append(time.perf_counter() - start)
    return found, seconds


def timed_search(
    db: Database, sources: dict[str, Source], queries: list[Query], runs: int, pg_pid: int | None
) -> tuple[list[dict[tuple[int, str], list[float]]], dict[tuple[int, str], list[list[int]]], list[Span]]:
    """Per run, the seconds of every call by (ef_search, kind); the rows of the last run; each run's Span."""
    timings: list[dict[tuple[int, str], list[float]]] = []
    found: dict[tuple[int, str], list[list[int]]] = {}
    spans: list[Span] = []
    with db.connect() as conn:
        for query in queries:  # a first pass, untimed: the index's pages come into memory
            for kind in KINDS:
                top_ids(conn, sources[kind.config.source_name], kind, query)
        for run in range(1, runs + 1):
            with span(pg_pid) as measured:
                timings.append(timed_pass(conn, sources, queries, found))
            spans += measured
            progress(f"timed pass {run}/{runs}")
    return timings, found, spans


def timed_pass(
    conn: psycopg.Connection,
    sources: dict[str, Source],
    queries: list[Query],
    found: dict[tuple[int, str], list[list[int]]],
) -> dict[tuple[int, str], list[float]]:
    """Every query through every kind at each ef_search (kinds interleaved: drift hits them alike)."""
    seconds: dict[tuple[int, str], list[float]] = {}
    for ef in EF_SEARCH:
        conn.execute(sql.SQL("SET hnsw.ef_search = {}").format(sql.Literal(ef)))
        for kind in KINDS:
            seconds[ef, kind.name], found[ef, kind.name] = [], []
        for query in queries:
            for kind in KINDS:
                start = time.perf_counter()
                found[ef, kind.name].append(top_ids(conn, sources[kind.config.source_name], kind, query))
                seconds[ef, kind.name].append(time.perf_counter() - start)
    conn.execute("RESET hnsw.ef_search")
    return seconds


def recall(found: list[list[int]], exact: list[list[int]]) -> float:
    """Mean share of the exact rows found, over the queries."""
    return statistics.mean(len(set(f) & set(e)) / len(e) for f, e in zip(found, exact, strict=True))


def numpy_top(rows: Rows, queries: list[Query]) -> list[list[int]]:
    """The K nearest rows of a one-chunk-per-row source by brute force: to check the database's exact search."""
    similarity = np.stack([q.embedding for q in queries]) @ rows.vectors.T
    best = np.argsort(-similarity, axis=1)[:, :K]
    return [[int(i) + 1 for i in row] for row in best]


def scan_nodes(plan: Any) -> Iterator[dict[str, Any]]:
    """Every node of an EXPLAIN (FORMAT JSON) plan that scans a relation."""
    if isinstance(plan, dict):
        if "Relation Name" in plan:
            yield plan
        for value in plan.values():
            yield from scan_nodes(value)
    elif isinstance(plan, list):
        for value in plan:
            yield from scan_nodes(value)


def explain(conn: psycopg.Connection, source: Source, kind: Kind, query: Query) -> Any:
    """EXPLAIN ANALYZE of one search as syncer's clients run it (iterative scan on)."""
    function = source.hybrid_fn if kind.hybrid else source.search_fn
    call = sql.SQL(CALLS[kind.hybrid]).format(function=function)
    params = {"embedding": query.embedding, "k": K, "text": query.words}
    with transaction(conn):
        conn.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
        row = conn.execute(sql.SQL(EXPLAIN).format(call=call), params).fetchone()
    return row[0] if row else []


def plans(db: Database, sources: dict[str, Source], query: Query) -> dict[str, dict[str, Any]]:
    """Per kind, for one query: whether the HNSW index serves it, and how many rows of the source table it reads
    (the K it returns, or a whole scan of the table)."""
    found = {}
    with db.connect() as conn:
        for kind in KINDS:
            source = sources[kind.config.source_name]
            nodes = list(scan_nodes(explain(conn, source, kind, query)))
            table = [n for n in nodes if n["Relation Name"] == source.table_name]
            found[kind.name] = {
                "hnsw": any(n.get("Index Name") == source.index_name for n in nodes),
                "table_rows": sum(n["Actual Rows"] * n["Actual Loops"] for n in table),
                "table_scans": sorted({n["Node Type"] for n in table}),
            }
    return found


def full_text_matches(db: Database, source: Source, texts: list[str]) -> list[int]:
    """Chunks each query text matches (hybrid search's full-text half ranks them all)."""
    count = sql.SQL(COUNT_MATCHES).format(store=source.store, config=sql.Literal(source.config.search_config))
    with db.connect() as conn:
        return [row[0] for text in texts if (row := conn.execute(count, [text]).fetchone())]


# The report


def context(db: Database, provider: Provider, server: Server) -> dict[str, Any]:
    with db.connect() as conn:
        settings = {
            name: str(row[0])
            for name in ("server_version", "shared_buffers", "max_parallel_maintenance_workers")
            if (row := conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone())
        }
        version = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
    return {
        "cpus": psutil.cpu_count(),
        "model": provider.model_id,
        "postgres": f"{settings['server_version']}, {server.kind}",
        "pgvector": version[0] if version else "?",
        "shared_buffers": settings["shared_buffers"],
        "maintenance_work_mem": MAINTENANCE_WORK_MEM,
        "max_parallel_maintenance_workers": settings["max_parallel_maintenance_workers"],
    }


def realism(data: dict[str, Rows], queries: list[Query]) -> dict[str, float]:
    """How the synthetic rows compare with the real texts they are made from."""
    plain = data[PLAIN.source_name]
    to_origin = np.sum(plain.vectors * plain.base[plain.origins], axis=1)
    real = plain.base @ plain.base.T
    np.fill_diagonal(real, -1.0)
    similarity = np.sort(np.stack([q.embedding for q in queries]) @ plain.vectors.T, axis=1)
    return {
        "row_to_its_text": float(np.mean(to_origin)),
        "two_copies_of_a_text": float(np.mean(to_origin) ** 2),
        "real_nearest_neighbour_median": float(np.median(real.max(axis=1))),
        "query_top1_median": float(np.median(similarity[:, -1])),
        "query_top10_median": float(np.median(similarity[:, -K])),
    }


def print_context(info: dict[str, Any], args: argparse.Namespace, facts: dict[str, float]) -> None:
    print(f"syncer search benchmark: {args.rows:,} rows per source, {args.queries} queries, {args.runs} timed runs")
    print(f"  cpus {info['cpus']}, model {info['model']}")
    print(
        f"  postgres {info['postgres']}, pgvector {info['pgvector']}, shared_buffers {info['shared_buffers']}; "
        f"HNSW m {args.m}, ef_construction {args.ef_construction} (built by syncer's index function) with "
        f"maintenance_work_mem {info['maintenance_work_mem']}, {info['max_parallel_maintenance_workers']} parallel "
        "maintenance workers"
    )
    print(
        f"  rows: noisy copies (noise {args.noise}) of {args.texts} real texts' vectors; cosine of a row to its "
        f"text {facts['row_to_its_text']:.3f} (two copies ~{facts['two_copies_of_a_text']:.3f}; a real text to "
        f"its nearest real neighbour: median {facts['real_nearest_neighbour_median']:.3f})"
    )
    print(
        f"  queries: cosine of the exact 1st / 10th row (vector search), median "
        f"{facts['query_top1_median']:.3f} / {facts['query_top10_median']:.3f}"
    )


def print_data(loaded: dict[str, Loaded], matches: dict[str, list[int]], used: dict[str, dict[str, Any]]) -> None:
    print()
    for name, source in loaded.items():
        built = f"HNSW index built in {source.index_seconds:.1f}s"
        print(f"{name}: {source.rows:,} rows, {source.vectors:,} vectors, {built}")
    words, sentences = matches["words"], matches["sentence"]
    cuts = statistics.quantiles(words, n=10, method="inclusive")
    print(
        f"hybrid query text ({KEYWORDS} words of a query) matches chunks: median {statistics.median(words):.0f}, "
        f"p90 {cuts[8]:.0f}, max {max(words)}, none for {sum(m == 0 for m in words)} of {len(words)} queries; "
        f"the whole query sentence would match none for {sum(m == 0 for m in sentences)}"
    )
    for kind, plan in used.items():
        print(
            f"plan of {kind}: HNSW index {'used' if plan['hnsw'] else 'NOT used'}; reads {plan['table_rows']:,.0f} "
            f"rows of the source table ({', '.join(plan['table_scans'])})"
        )


def results(
    timings: list[dict[tuple[int, str], list[float]]],
    found: dict[tuple[int, str], list[list[int]]],
    exact: dict[str, list[list[int]]],
    exact_seconds: dict[str, list[float]],
) -> list[dict[str, Any]]:
    """Per kind and ef_search: p50 and p99 (ms) as min/median/max over the runs, recall@10, exact p50."""
    return [
        {
            "kind": kind.name,
            "ef_search": ef,
            "p50_ms": spread([percentiles_ms(run[ef, kind.name])["p50"] for run in timings]),
            "p99_ms": spread([percentiles_ms(run[ef, kind.name])["p99"] for run in timings]),
            "recall_at_10": recall(found[ef, kind.name], exact[kind.name]),
            "exact_p50_ms": percentiles_ms(exact_seconds[kind.name])["p50"],
        }
        for kind in KINDS
        for ef in EF_SEARCH
    ]


def triple(values: dict[str, float]) -> str:
    return " / ".join(f"{v:.1f}" for v in values.values())


def print_results(rows: list[dict[str, Any]], vectors: dict[str, int]) -> None:
    headers = ["search", "vectors", "ef_search", "p50 ms (min/med/max)", "p99 ms (min/med/max)", "recall@10", "exact"]
    cells = [
        (r["kind"], f"{vectors[r['kind']]:,}", r["ef_search"], triple(r["p50_ms"]), triple(r["p99_ms"]),
         f"{r['recall_at_10']:.3f}", f"{r['exact_p50_ms']:.0f} ms")
        for r in rows
    ]  # fmt: skip
    print()
    print(format_table(headers, cells))


def print_markdown(rows: list[dict[str, Any]], vectors: dict[str, int], args: argparse.Namespace) -> None:
    labels = {kind.name: kind.label for kind in KINDS}
    print("\nREADME summary:\n")
    print("| search | vectors | `hnsw.ef_search` | p50 ms | p99 ms | recall@10 |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {labels[r['kind']]} | {vectors[r['kind']]:,} | {r['ef_search']} | {triple(r['p50_ms'])} | "
            f"{triple(r['p99_ms'])} | {r['recall_at_10']:.3f} |"
        )
    print(f"\n({args.rows:,} rows per source, {args.queries} queries, min / median / max of {args.runs} runs.)")


def write_results(report: dict[str, Any], started: datetime) -> Path:
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"search-{started:%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def benchmark(
    db: Database,
    server: Server,
    settings: Settings,
    provider: Provider,
    data: dict[str, Rows],
    queries: list[Query],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Load, check the plans, search exactly, then time; what was measured, ready for JSON."""
    info = context(db, provider, server)
    facts = realism(data, queries)
    print_context(info, args, facts)
    loaded = load(db, settings, provider, data)
    with db.connect() as conn:
        sources = {config.source_name: catalog.resolve(conn, config) for config in settings.sources}
    used = plans(db, sources, queries[0])
    chunked = sources[CHUNKED.source_name]
    matches = {
        "words": full_text_matches(db, chunked, [q.words for q in queries]),
        "sentence": full_text_matches(db, chunked, [q.text for q in queries]),
    }
    print_data(loaded, matches, used)
    progress(f"exact searches: {len(queries)} queries x {len(KINDS)} kinds, sequential scans")
    exact, exact_seconds = exact_search(db, sources, queries)
    if recall(numpy_top(data[PLAIN.source_name], queries), exact["vector"]) < 1.0:
        raise BenchError("the database's exact vector search differs from brute force in numpy")
    timings, found, spans = timed_search(db, sources, queries, args.runs, server.pid)
    return {
        "context": info,
        "data": facts | {"loaded": {name: asdict(source) for name, source in loaded.items()}},
        "full_text_matches": matches,
        "plans": used,
        "results": results(timings, found, exact, exact_seconds),
        "others_cpu_share": [s.others for s in spans],
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now(UTC)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
    texts, held = split_texts(args.texts, args.queries)
    rng = np.random.default_rng(SEED)
    with postgres() as server:
        settings = Settings(
            database_url=server.url,
            sources=[PLAIN, CHUNKED],
            index_memory=MAINTENANCE_WORK_MEM,
            index_m=args.m,
            index_ef_construction=args.ef_construction,
        )
        provider = load_provider(settings)
        progress(f"embedding {len(texts)} texts and {len(held)} queries")
        vectors = np.asarray(provider.embed_documents(texts), dtype=np.float32)
        queries = [make_query(doc, provider) for doc in held]
        data = {
            PLAIN.source_name: plain_rows(texts, vectors, args.rows, args.noise, rng),
            CHUNKED.source_name: chunked_rows(texts, vectors, args.rows, args.noise, rng),
        }
        with fresh_database(server.url, f"syncer_bench_search_{os.getpid()}") as url:
            measured = benchmark(Database(url), server, settings, provider, data, queries, args)
    vectors_per_kind = {kind.name: len(data[kind.config.source_name].chunks) for kind in KINDS}
    print_results(measured["results"], vectors_per_kind)
    busiest = max(measured["others_cpu_share"])
    if busiest > BUSY_OTHERS:
        print(f"\nwarning: other processes used up to {100 * busiest:.0f}% of the CPUs during the timed runs")
    print_markdown(measured["results"], vectors_per_kind, args)
    report = {"started": started.isoformat(timespec="seconds"), "args": vars(args)} | measured
    print(f"\nresults: {write_results(report, started)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
