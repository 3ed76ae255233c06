"""A row that keeps failing becomes dead: out of the retries and the lag, listed, and put back on request."""

from __future__ import annotations

import json
import time

import psycopg

from syncer import report, schema
from syncer.database import Database

from helpers import expand, make_settings, sha256, stored, sync_once, syncer_env, syncer_process
from providers import HashEmbedder, PoisonEmbedder

DOCS = {"table": "docs", "columns": ["body"]}


def cli(db_url: str, *args: str) -> str:
    env = syncer_env(db_url, json.dumps([DOCS]), SYNCER_PROVIDER="tests.providers:HashEmbedder")
    output, _ = (process := syncer_process(list(args), env)).communicate(timeout=60)
    assert process.returncode == 0, output
    return output


def row_2(conn: psycopg.Connection) -> tuple[int, bool, str | None]:
    expand(conn)  # an edit is logged; a worker's next claim moves it into the queue
    return conn.execute(
        "SELECT attempts, dead_at IS NOT NULL, last_error FROM syncer.docs_queue WHERE id = 2"
    ).fetchone()


def poisoned(conn: psycopg.Connection, db_url: str) -> None:
    """Row 2 rejected twice (SYNCER_MAX_ATTEMPTS=2): dead."""
    conn.execute("UPDATE docs SET body = 'POISON pill' WHERE id = 2")
    settings = make_settings(db_url, DOCS, max_attempts=2, retry_base_seconds=0.1, retry_max_seconds=0.1)
    sync_once(settings, PoisonEmbedder())
    assert row_2(conn)[:2] == (1, False)
    time.sleep(0.2)
    sync_once(settings, PoisonEmbedder())
    assert row_2(conn)[:2] == (2, True)
    time.sleep(0.2)
    provider = PoisonEmbedder()
    sync_once(settings, provider)
    assert provider.calls == [] and row_2(conn)[:2] == (2, True)  # dead: not retried


def test_a_dead_row_leaves_the_lag_and_shows_apart(conn: psycopg.Connection, docs: str, db_url: str) -> None:
    poisoned(conn, db_url)
    settings = make_settings(db_url, DOCS)
    with psycopg.connect(db_url) as c:
        [source] = schema.resolve_all(Database(db_url), settings)
        status = report.status(c, source)
    q = status.queue
    assert (q.pending, q.ready, q.leased, q.backoff, q.failing, q.dead, q.oldest_seconds) == (0, 0, 0, 0, 0, 1, None)
    assert "POISON" in (q.last_error or "")
    line = cli(db_url, "status").splitlines()[-1].split()
    assert line[:8] == ["docs", "5", "3", "exact", "0", "0", "1", "-"]


def test_errors_lists_failing_and_dead_rows(conn: psycopg.Connection, docs: str, db_url: str) -> None:
    poisoned(conn, db_url)
    header, rule, row = cli(db_url, "errors").splitlines()
    assert header.split()[:5] == ["source", "key", "attempts", "state", "first"]
    assert row.split()[:4] == ["docs", "2", "2", "dead"]
    assert row.endswith("ValueError: input rejected: contains POISON")
    assert cli(db_url, "errors", "docs", "--limit", "0").strip() == "no failing or dead rows"


def test_retry_puts_dead_rows_back_with_attempts_reset(conn: psycopg.Connection, docs: str, db_url: str) -> None:
    poisoned(conn, db_url)
    assert cli(db_url, "retry", "docs", "2", "9").splitlines() == [
        "docs: 1 rows back in line: 2",
        "docs: not failing (nothing to retry): 9",
    ]
    assert row_2(conn) == (0, False, None)
    sync_once(make_settings(db_url, DOCS), HashEmbedder())  # the provider was fixed meanwhile
    assert stored(conn)[2][1] == sha256("POISON pill")


def test_retry_all_and_an_edit_reset_dead_rows(conn: psycopg.Connection, docs: str, db_url: str) -> None:
    poisoned(conn, db_url)
    assert cli(db_url, "retry", "docs", "--all").strip() == "docs: 1 rows back in line: 2"
    poisoned(conn, db_url)
    conn.execute("UPDATE docs SET body = 'fixed' WHERE id = 2")
    assert row_2(conn) == (0, False, None)
    oldest = conn.execute("SELECT now() - queued_at < interval '1 second' FROM syncer.docs_queue").fetchone()
    assert oldest == (True,)  # a dead row edited back to life is fresh, not as old as its first failure
    sync_once(make_settings(db_url, DOCS), HashEmbedder())
    assert stored(conn)[2][1] == sha256("fixed")
