"""`syncer demo`: a sample table of real text (Python's own docstrings), synced and searched."""

from __future__ import annotations

import importlib
import inspect
import logging
import random
import sys
import warnings

import psycopg

from . import report, schema, search
from .database import Database
from .providers import Provider, load_provider
from .settings import Settings, SourceConfig
from .sources import Source
from .worker import Worker, WorkerOptions, backlog_progress

log = logging.getLogger(__name__)

SKIP_PREFIXES = ("test", "idlelib", "tkinter", "turtle", "antigravity", "this", "lib2to3", "ensurepip", "venv")


def corpus(limit: int, seed: int = 42) -> list[tuple[str, str]]:
    """Up to ``limit`` (title, text) pairs: unique docstrings (>= 20 chars) of the standard library."""
    seen: set[str] = set()
    docs: list[tuple[str, str]] = []
    for name in sorted(sys.stdlib_module_names):
        if name.startswith(SKIP_PREFIXES) or name.startswith("_"):
            continue
        module = _import(name)
        if module is None:
            continue
        with warnings.catch_warnings():  # touching deprecated members (typing.io, ...) warns
            warnings.simplefilter("ignore")
            for title, obj in [(name, module), *_members(name, module)]:
                doc = inspect.getdoc(obj)
                if doc and len(doc) >= 20 and doc not in seen:
                    seen.add(doc)
                    docs.append((title, doc))
    random.Random(seed).shuffle(docs)
    return docs[:limit]


def _import(name: str) -> object | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return importlib.import_module(name)
        except Exception:  # platform-specific or optional modules: skip them
            return None


def _members(prefix: str, module: object) -> list[tuple[str, object]]:
    members: list[tuple[str, object]] = []
    for attr, value in vars(module).items():
        if attr.startswith("_") or getattr(value, "__module__", None) != getattr(module, "__name__", None):
            continue
        if inspect.isclass(value) or inspect.isfunction(value):
            members.append((f"{prefix}.{attr}", value))
            if inspect.isclass(value):
                members += [
                    (f"{prefix}.{attr}.{m}", f)
                    for m, f in vars(value).items()
                    if not m.startswith("_") and inspect.isfunction(f)
                ]
    return members


SETUP = """
DROP TABLE IF EXISTS public.demo_docs CASCADE;
CREATE TABLE public.demo_docs (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, title text, body text)
"""


def demo(settings: Settings, rows: int) -> int:
    """Create public.demo_docs, sync it, edit and delete rows, and search it in SQL."""
    settings = settings.model_copy(
        update={"sources": [SourceConfig(table="public.demo_docs", template="{title}\n\n{body}")]}
    )
    db = Database.from_settings(settings)
    docs = corpus(rows + HANDBOOK_PARTS)
    docs, handbook = docs[:rows], _handbook([text for _, text in docs[rows:]])
    print(f"1. creating public.demo_docs with {len(docs)} docstrings of Python's standard library")
    with db.connect(vector=False) as conn, conn.transaction():
        conn.execute(SETUP)
        with conn.cursor().copy("COPY public.demo_docs (title, body) FROM STDIN") as copy:
            for doc in docs:
                copy.write_row(doc)
    provider = load_provider(settings)
    source_list = [source for source, _ in schema.apply(db, settings, provider)]
    print(f"2. syncing {source_list[0].qualified} into {source_list[0].qualified_store} with {provider.model_id}")
    options = WorkerOptions.from_settings(settings)
    Worker(db, provider, source_list, options, backlog_progress(db, source_list)).run(once=True)
    _show_status(db, source_list)
    print("3. editing row 1, emptying row 2, deleting row 3, adding a long handbook and a ticket, syncing again")
    with db.connect() as conn:
        conn.execute(
            "UPDATE public.demo_docs SET title = 'soup', body = 'Simmer tomatoes, onions and garlic "
            "for twenty minutes, then blend into a smooth tomato soup.' WHERE id = 1"
        )
        conn.execute("UPDATE public.demo_docs SET body = NULL, title = NULL WHERE id = 2")
        conn.execute("DELETE FROM public.demo_docs WHERE id = 3")
        conn.execute("INSERT INTO public.demo_docs (title, body) VALUES ('Operations handbook', %s)", [handbook])
        conn.execute(
            "INSERT INTO public.demo_docs (title, body) SELECT 'Ticket ' || i, b FROM unnest(%s::text[]) "
            "WITH ORDINALITY AS t(b, i)",
            [TICKETS],
        )
    Worker(db, provider, source_list, options).run(once=True)
    _show_status(db, source_list)
    _show_searches(db, source_list[0], provider)
    _show_long_and_hybrid(db, source_list[0], provider)
    return 0


HANDBOOK_PARTS = 120  # docstrings a long document is made of, the passage sought deep inside it
PASSAGE = "The lighthouse keeper feeds seventeen orange cats every Tuesday at dawn."
TICKETS = [  # codes alike to a model; the one asked for sits in a text about something else
    "ZX-4417",
    "ZX-1447 ZX-7441 ZX-4174",
    "XZ-4471",
    "Quarterly report on the loading dock and forklift maintenance; see ZX-4471 for the roof repair.",
]


def _handbook(parts: list[str]) -> str:
    """A long document, with one passage two thirds into it."""
    middle = 2 * len(parts) // 3
    return "\n\n".join([*parts[:middle], PASSAGE, *parts[middle:]])


def _show_status(db: Database, source_list: list[Source]) -> None:
    with db.connect() as conn:
        s = report.status(conn, source_list[0])
    q = s.queue
    print(f"   rows {s.rows}, embedded {s.embedded}, queued {q.pending}, failing {q.failing}, dead {q.dead}")


def _show_searches(db: Database, source: Source, provider: Provider) -> None:
    with db.connect() as conn:
        for question in ("how do I make tomato soup?", "compress a file with gzip", "parse command line options"):
            print(f"\n4. SELECT id, title, similarity FROM syncer.search_demo_docs(<embedding of {question!r}>, 3);")
            headers, rows = search.top(conn, source, provider.embed_query(question), 3)
            keep = [headers.index(h) for h in ("id", "title", "similarity")]
            print(report.format_table([headers[i] for i in keep], [tuple(r[i] for i in keep) for r in rows]))
        print("\n5. more like row 1, in plain SQL:")
        print(
            "   SELECT id, title, similarity FROM syncer.search_demo_docs("
            "(SELECT embedding FROM public.demo_docs_embeddings WHERE id = 1 AND chunk = 0), 3);"
        )
        cur = conn.execute(
            "SELECT id, title, similarity FROM syncer.search_demo_docs("
            "(SELECT embedding FROM public.demo_docs_embeddings WHERE id = 1 AND chunk = 0), 3)"
        )
        print(report.format_table(["id", "title", "similarity"], cur.fetchall()))
        gone = conn.execute("SELECT count(*) FROM public.demo_docs_embeddings WHERE id IN (2, 3)").fetchone()
        print(f"\n   vectors left for the emptied row 2 and deleted row 3: {gone[0] if gone else '?'}")


def _show_long_and_hybrid(db: Database, source: Source, provider: Provider) -> None:
    with db.connect() as conn:
        question = "the lighthouse keeper feeding orange cats"
        print(f"\n6. a long document, found by a passage deep inside it ({question!r}):")
        headers, rows = search.top(conn, source, provider.embed_query(question), 3)
        keep = [headers.index(h) for h in ("id", "title", "similarity", "match_chunk", "match_start", "match_end")]
        print(report.format_table([headers[i] for i in keep], [tuple(r[i] for i in keep) for r in rows]))
        found = [dict(zip(headers, row, strict=True)) for row in rows]
        best = next((r for r in found if r["title"] == "Operations handbook"), found[0])
        chunks = conn.execute(
            "SELECT count(*) FROM public.demo_docs_embeddings e JOIN public.demo_docs d USING (id) "
            "WHERE d.title = 'Operations handbook'"
        ).fetchone()
        size = len(_handbook_text(conn))
        print(f"   the handbook is {size} characters long, stored as {chunks[0] if chunks else '?'} chunks")
        print(f"   (each row is returned once, by its best chunk); its chunk {best['match_chunk']} holds:")
        text = best["match_text"] or ""
        at = max(text.find(PASSAGE) - 80, 0)
        print(f"   …{' '.join(text[at : at + 240].split())}…")
        for hybrid in (False, True):
            kind = (
                "hybrid_search_demo_docs('ZX-4471', <embedding>, 3)" if hybrid else "search_demo_docs(<embedding>, 3)"
            )
            print(f"\n{7 + hybrid}. an exact identifier, SELECT id, title, body FROM syncer.{kind}:")
            embedding = provider.embed_query("ZX-4471")
            headers, rows = search.top(conn, source, embedding, 3, text="ZX-4471" if hybrid else None)
            keep = [headers.index(h) for h in ("id", "title", "body")]
            print(report.format_table([headers[i] for i in keep], [tuple(r[i] for i in keep) for r in rows]))


def _handbook_text(conn: psycopg.Connection) -> str:
    row = conn.execute("SELECT body FROM public.demo_docs WHERE title = 'Operations handbook'").fetchone()
    return row[0] if row else ""
