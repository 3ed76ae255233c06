"""`syncer run | apply | backfill | status | search | reembed | drop | config | demo`."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import psycopg
import pydantic
import pydantic_settings

from . import catalog, grants, logs, metrics, processes, queue, report, schema, search
from .database import Database
from .errors import ConfigError, ProviderError, ProviderFatal, StoreChanged
from .health import Health
from .providers import Provider, load_provider
from .redact import redact
from .settings import Settings
from .sources import Source
from .wakeup import backoff
from .worker import Worker, WorkerOptions, backlog_progress

if TYPE_CHECKING:
    from .http import Endpoint

log = logging.getLogger("syncer")

PROVIDER_RETRY_BASE, PROVIDER_RETRY_CAP = 1.0, 60.0  # seconds, while the provider is not up at start


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    wanted = processes.count(args.processes, settings.provider)
    if wanted > 1:
        return processes.run(wanted, ["--once"] if args.once else [])
    # Signals first: SIGTERM during start-up (loading a model, waiting for the provider) must stop us.
    stopping = threading.Event()
    workers: list[Worker] = []

    def on_signal(*_: object) -> None:
        stopping.set()
        for worker in workers:
            worker.stop()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    db = Database.from_settings(settings)
    health = Health(settings.max_batch_seconds)
    sources: list[Source] = []
    endpoint = _endpoint(settings, health, db, sources)  # probes answer while the model loads
    try:
        schema.resolve_all(db, settings)  # fail fast on a bad table or column, before loading a model
        provider = start_provider(settings, stopping)
        if provider is None:
            return 0
        health.provider = provider.model_id
        if settings.apply == "auto":
            sources += [source for source, _ in schema.apply(db, settings, provider, stopping=stopping)]
        else:
            sources += schema.verify(db, settings, provider)
        options = WorkerOptions.from_settings(settings)
        worker = Worker(db, provider, sources, options, backlog_progress(db, sources), health)
        workers.append(worker)
        if stopping.is_set():
            return 0
        log.info("syncing %s with %s", ", ".join(s.name for s in sources), provider.model_id)
        gc.freeze()  # what start-up built (modules, the model) lives as long as we do: no collection need walk it
        worker.run(once=args.once)
        log.info("stopped" if worker.stopping else "queue drained")
        return 0
    finally:
        if endpoint is not None:
            endpoint.stop()


def _endpoint(settings: Settings, health: Health, db: Database, sources: list[Source]) -> Endpoint | None:
    """/metrics, /healthz and /readyz on SYNCER_HTTP_HOST:SYNCER_HTTP_PORT, if a port is set."""
    if settings.http_port is None:
        return None
    from .http import Endpoint, application

    collector = metrics.QueueCollector(lambda: db.connect(vector=False, connect_timeout=2), lambda: list(sources))
    endpoint = Endpoint(application(health, db, metrics.registry(collector)), settings.http_host, settings.http_port)
    endpoint.start()
    log.info("serving /metrics, /healthz and /readyz on http://%s", endpoint.address)
    return endpoint


def start_provider(settings: Settings, stopping: threading.Event) -> Provider | None:
    """The configured provider, waiting with backoff while it is down; None if asked to stop meanwhile."""
    failures = 0
    while not stopping.is_set():
        try:
            return load_provider(settings)
        except ProviderError as exc:
            failures += 1
            delay = backoff(failures, base=PROVIDER_RETRY_BASE, cap=PROVIDER_RETRY_CAP)
            log.warning("provider not available (%s); retrying in %.1fs", exc, delay)
            stopping.wait(delay)
    return None


def cmd_apply(settings: Settings, args: argparse.Namespace) -> int:
    db = Database.from_settings(settings)
    schema.resolve_all(db, settings)
    for source, queued in schema.apply(db, settings, load_provider(settings), adopt=args.adopt):
        print(f"{source.name}: {source.qualified} -> {source.qualified_store}, {queued} rows queued")
    return 0


def cmd_backfill(settings: Settings, args: argparse.Namespace) -> int:
    db = Database.from_settings(settings)
    with db.connect() as conn:
        for source in selected(db, settings, args.sources):
            queued = queue.enqueue(conn, source, "stale")
            print(f"{source.name}: {queued} rows queued whose vector is missing, stale or orphaned")
    return 0


def cmd_grant(settings: Settings, args: argparse.Namespace) -> int:
    db = Database.from_settings(settings)
    source_list = schema.resolve_all(db, settings)
    with db.connect() as conn:
        if args.print:
            granted = grants.statements(conn, args.kind, args.role, source_list)
        else:
            granted = grants.grant(conn, args.kind, args.role, source_list)
    for statement in granted:
        print(f"{statement};")
    return 0


def selected(db: Database, settings: Settings, names: list[str]) -> list[Source]:
    """The sources named (all when none is), resolved against the catalog."""
    for name in names:
        settings.source(name)  # an unknown name is an error, not an empty selection
    return [s for s in schema.resolve_all(db, settings) if not names or s.name in names]


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    db = Database.from_settings(settings)
    source_list = schema.resolve_all(db, settings)
    with db.connect() as conn:
        lines = [report.status(conn, s) for s in source_list]
    if args.json:
        print(json.dumps([s.as_json() for s in lines], indent=2))
    else:
        headers = ["source", "rows", "embedded", "search", "queued", "failing", "dead", "oldest pending", "last error"]
        print(report.format_table(headers, [_status_row(s) for s in lines]))
    if args.max_lag is not None:
        lagging = [s.source for s in lines if (s.queue.oldest_seconds or 0.0) > args.max_lag]
        if lagging:
            print(f"syncer: pending longer than {args.max_lag:g}s: {', '.join(lagging)}", file=sys.stderr)
            return 1
    return 0


def _status_row(s: report.Status) -> tuple[object, ...]:
    q = s.queue
    rows = f"~{s.rows}" if s.rows_estimated else s.rows
    embedded = f"~{s.embedded} vectors" if s.embedded_estimated else s.embedded
    if s.vectors is not None and s.vectors != s.embedded:
        embedded = f"{s.embedded} ({s.vectors} chunks)"
    search = "hnsw" if s.indexed else "exact"
    return (s.source, rows, embedded, search, q.pending, q.failing, q.dead, _age(q.oldest_seconds), q.last_error)


def cmd_errors(settings: Settings, args: argparse.Namespace) -> int:
    db = Database.from_settings(settings)
    rows = []
    with db.connect() as conn:
        for source in selected(db, settings, args.sources):
            for f in queue.failures(conn, source, args.limit):
                rows.append(
                    (source.name, f.key, f.attempts, f.state, _time(f.first_failed), _time(f.last_failed), f.error)
                )
    if not rows:
        print("no failing or dead rows")
        return 0
    headers = ["source", "key", "attempts", "state", "first failure", "last failure", "last error"]
    print(report.format_table(headers, rows, width=120, exact=frozenset({1})))
    return 0


def _time(moment: object) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S}" if moment is not None else "-"


def cmd_retry(settings: Settings, args: argparse.Namespace) -> int:
    if bool(args.keys) == args.all:
        raise ConfigError("give the keys to retry, or --all (every failing and dead row of the source)")
    db = Database.from_settings(settings)
    source = source_by_name(db, settings, args.source)
    with db.connect() as conn:
        keys = queue.retry(conn, source, None if args.all else args.keys)
    print(f"{source.name}: {len(keys)} rows back in line" + (f": {', '.join(keys)}" if keys else ""))
    unknown = sorted(set(args.keys) - set(keys))
    if unknown:
        print(f"{source.name}: not failing (nothing to retry): {', '.join(unknown)}")
    return 0


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f}s"
    return f"{seconds / 60:.0f}m" if seconds < 7200 else f"{seconds / 3600:.1f}h"


def cmd_search(settings: Settings, args: argparse.Namespace) -> int:
    db = Database.from_settings(settings)
    source = source_by_name(db, settings, args.source)
    provider = load_provider(settings)
    filter = json.loads(args.filter) if args.filter else None
    with db.connect() as conn:
        text = args.text if args.hybrid else None
        headers, rows = search.top(conn, source, provider.embed_query(args.text), args.k, filter, text)
    shown = [
        i
        for i, h in enumerate(headers)
        if h not in SEARCH_HIDDEN and (h not in SEARCH_SPARSE or any(r[i] is not None for r in rows))
    ]
    print(report.format_table([headers[i] for i in shown], [tuple(r[i] for i in shown) for r in rows]))
    return 0


SEARCH_HIDDEN = ("match_chunk", "match_start", "match_end")  # in `syncer search`'s table: the passage says it
SEARCH_SPARSE = ("match_text", "text_rank")  # shown when some row has one


def source_by_name(db: Database, settings: Settings, name: str) -> Source:
    config = settings.source(name)
    with db.connect(vector=False) as conn:
        return catalog.resolve(conn, config)


def cmd_drop(settings: Settings, args: argparse.Namespace) -> int:
    db = Database.from_settings(settings)
    source = source_by_name(db, settings, args.source)
    schema.drop_source(db, source)
    print(f"{source.name}: dropped {source.qualified_store}, its queue, triggers and search function")
    return 0


def cmd_reembed(settings: Settings, args: argparse.Namespace) -> int:
    from . import reembed

    db = Database.from_settings(settings)
    source = source_by_name(db, settings, args.source)
    provider = load_provider(settings)
    embedded = reembed.reembed(db, settings, provider, source)
    print(f"{source.name}: {source.qualified_store} now holds {provider.model_id} vectors ({embedded} embedded)")
    print("restart the workers with this model: workers still running the old one stop with a message")
    return 0


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from .api import Searcher
    from .serve import Limits, serve_application

    limits = Limits(settings.serve_api_key, settings.serve_max_inputs, settings.serve_max_bytes)
    host, port = args.host or settings.serve_host, args.port or settings.serve_port
    with Searcher(settings) as searcher:
        app = serve_application(searcher, limits)
        log.info("serving embeddings (%s) and search on http://%s:%d/v1", searcher.model_id, host, port)
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
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
    "grant": cmd_grant,
    "backfill": cmd_backfill,
    "status": cmd_status,
    "errors": cmd_errors,
    "retry": cmd_retry,
    "search": cmd_search,
    "drop": cmd_drop,
    "reembed": cmd_reembed,
    "serve": cmd_serve,
    "config": cmd_config,
    "demo": cmd_demo,
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="syncer", description="Keep pgvector embeddings of table rows in sync.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="apply (unless SYNCER_APPLY=never), then follow changes until stopped")
    run.add_argument("--once", action="store_true", help="process everything pending, then exit")
    run.add_argument(
        "--processes",
        default="1",
        type=_processes,
        metavar="N|auto",
        help="worker processes, each with its share of the CPUs (auto: one per CPU for a local model)",
    )
    apply = sub.add_parser("apply", help="create or refresh syncer's schema and each source's objects")
    apply.add_argument(
        "--adopt", action="store_true", help="take the configured text definitions where they differ from the applied"
    )
    grant = sub.add_parser("grant", help="grant a role what a worker or a reader needs (run as the owner)")
    grant.add_argument("kind", choices=["worker", "reader"])
    grant.add_argument("role")
    grant.add_argument("--print", action="store_true", help="print the statements without running them")
    backfill = sub.add_parser("backfill", help="queue every row whose vector is missing or stale (reconcile)")
    backfill.add_argument("sources", nargs="*", help="source names (default: all)")
    status = sub.add_parser("status", help="rows, embedded, queued, failing, dead and lag per source")
    status.add_argument("--json", action="store_true", help="one JSON object per source")
    status.add_argument(
        "--max-lag", type=float, metavar="SECONDS", help="exit 1 if a source's oldest pending change is older"
    )
    errors = sub.add_parser("errors", help="failing and dead rows: key, attempts, state, failures, last error")
    errors.add_argument("sources", nargs="*", help="source names (default: all)")
    errors.add_argument("--limit", type=int, default=100, help="rows per source (default 100)")
    retry = sub.add_parser("retry", help="put failing or dead rows back in line, attempts reset")
    retry.add_argument("source")
    retry.add_argument("keys", nargs="*", help="keys as `syncer errors` prints them")
    retry.add_argument("--all", action="store_true", help="every failing and dead row of the source")
    search = sub.add_parser("search", help="embed TEXT and print the most similar rows")
    search.add_argument("source")
    search.add_argument("text")
    search.add_argument("-k", type=int, default=5, help="rows to show (default 5)")
    search.add_argument("--filter", help='JSON the rows must contain, e.g. \'{"lang": "en"}\'')
    search.add_argument("--hybrid", action="store_true", help="rank by full-text and vector search together")
    drop = sub.add_parser("drop", help="remove a source's store, queue, triggers and search function")
    drop.add_argument("source")
    reembed_cmd = sub.add_parser(
        "reembed", help="re-embed a source with the configured model while search keeps serving the old vectors"
    )
    reembed_cmd.add_argument("source")
    serve = sub.add_parser("serve", help="serve query embeddings (OpenAI's API) and search over HTTP")
    serve.add_argument("--host", help="address to bind (default SYNCER_SERVE_HOST, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default SYNCER_SERVE_PORT, 8000)")
    sub.add_parser("config", help="print the effective settings (secrets masked)")
    demo = sub.add_parser("demo", help="sync a sample table on the embedded default and show it working")
    demo.add_argument("--rows", type=int, default=1000, help="sample rows to create (default 1000)")
    return p


def _processes(value: str) -> str:
    if value == "auto" or (value.isdigit() and int(value) >= 1):
        return value
    raise argparse.ArgumentTypeError(f"{value!r} is neither a number of processes nor 'auto'")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logs.configure(level="DEBUG" if args.verbose else "INFO")
    secrets: list[str] = []
    try:
        settings = Settings()
        secrets = settings.secrets()
        logs.configure(settings.log_format, "DEBUG" if args.verbose else settings.log_level, secrets)
        return COMMANDS[args.command](settings, args)
    except pydantic.ValidationError as exc:
        _fail(f"invalid settings: {_validation_message(exc)}", secrets)
    except pydantic_settings.SettingsError as exc:
        _fail(f"invalid settings: {exc}", secrets)
    except (ConfigError, ProviderFatal, StoreChanged) as exc:
        _fail(str(exc), secrets)
    except ProviderError as exc:
        _fail(f"provider unavailable: {exc}", secrets)
    except psycopg.OperationalError as exc:
        _fail(f"database unavailable: {str(exc).strip()}", secrets)
    except psycopg.errors.UndefinedTable as exc:
        _fail(f"{str(exc).strip()}; has `syncer apply` (or `syncer run`) been run?", secrets)
    except psycopg.Error as exc:
        _fail(f"database error: {str(exc).strip()}", secrets)
    return 2


def entry(argv: list[str] | None = None) -> int:
    """The `syncer` command: ``main``, then an exit that does not collect what every module built (the
    interpreter's teardown would: 0.5 s)."""
    code = main(argv)
    gc.freeze()
    return code


def _fail(message: str, secrets: list[str]) -> None:
    print(f"syncer: {redact(message, secrets)}", file=sys.stderr)


def _validation_message(exc: pydantic.ValidationError) -> str:
    """``SYNCER_SOURCES[0].table: Input should be a valid string; ...``"""
    parts = []
    for error in exc.errors():
        message = error["msg"].removeprefix("Value error, ")
        if not error["loc"]:
            parts.append(message)
            continue
        first, *rest = error["loc"]
        where = f"SYNCER_{str(first).upper()}" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in rest)
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
