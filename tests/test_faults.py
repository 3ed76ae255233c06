"""Faults are classified once: a row's bad vector is that row's error, a provider's fault is never charged to rows."""

from __future__ import annotations

import json
import logging
import threading
import time

import psycopg
import pytest

from syncer import schema
from syncer.database import Database
from syncer.errors import ProviderFatal
from syncer.fragments import WHITESPACE
from syncer.providers import load_provider
from syncer.worker import Worker, WorkerOptions

from helpers import make_settings, queue_depth, sha256, stored, sync_once, syncer_env, syncer_process
from openai_server import FakeOpenAI
from providers import BadVectorEmbedder, HashEmbedder, ShortAnswerEmbedder, WrongSizeEmbedder

DOCS = {"table": "docs", "columns": ["body"]}


def charged(conn: psycopg.Connection) -> list[tuple[int, int, str | None]]:
    return conn.execute(
        "SELECT id, attempts, last_error FROM syncer.docs_queue WHERE attempts > 0 ORDER BY id"
    ).fetchall()


def leased(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT count(*) FROM syncer.docs_queue WHERE lease_token IS NOT NULL").fetchone()[0]


def test_non_finite_and_zero_vectors_are_the_rows_errors(conn: psycopg.Connection, docs: str, db_url: str) -> None:
    conn.execute("UPDATE docs SET body = body || ' NAN' WHERE id = 1")
    conn.execute("UPDATE docs SET body = body || ' INF' WHERE id = 2")
    conn.execute("UPDATE docs SET body = body || ' ZERO' WHERE id = 3")
    settings = make_settings(db_url, DOCS)

    sync_once(settings, BadVectorEmbedder())  # no StoreChanged, no stop: the rest of the batch is stored
    assert sorted(stored(conn)) == [4]
    errors = {key: (attempts, error) for key, attempts, error in charged(conn)}
    assert errors[1] == (1, "the provider returned a vector with NaN or infinite values")
    assert errors[2] == errors[1]
    assert errors[3] == (1, "the provider returned an all-zero vector (no direction: cosine similarity is undefined)")

    conn.execute("UPDATE docs SET body = 'healed' WHERE id = 1")
    sync_once(settings, BadVectorEmbedder())  # a restarted worker runs on, and the fixed row is stored
    assert stored(conn)[1][1] == sha256("healed")


def test_vectors_of_the_wrong_size_stop_the_worker_without_charging_rows(
    conn: psycopg.Connection, docs: str, db_url: str
) -> None:
    settings = make_settings(db_url, DOCS)
    provider = WrongSizeEmbedder()
    with pytest.raises(ProviderFatal, match="made 17-dimensional vectors, but it declares 16"):
        sync_once(settings, provider)
    assert len(provider.calls) == 1  # the whole batch, once: no bisection into single rows
    assert charged(conn) == [] and leased(conn) == 0 and queue_depth(conn) == 4


def test_a_malformed_answer_backs_the_worker_off_without_charging_rows(
    conn: psycopg.Connection, docs: str, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(db_url, DOCS, poll_interval=60)
    db = Database.from_settings(settings)
    provider = ShortAnswerEmbedder()
    applied = [s for s, _ in schema.apply(db, settings, provider)]
    worker = Worker(db, provider, applied, WorkerOptions.from_settings(settings))
    thread = threading.Thread(target=worker.run, daemon=True)
    with caplog.at_level(logging.WARNING):
        thread.start()
        deadline = time.monotonic() + 10
        while "answered 4 texts with an array of shape (3, 16); retrying in" not in caplog.text:
            assert time.monotonic() < deadline, caplog.text
            time.sleep(0.05)
        worker.stop()
        thread.join(10)
    assert not thread.is_alive()
    assert charged(conn) == [] and leased(conn) == 0 and stored(conn) == {}


def test_sql_and_python_agree_on_what_is_empty(conn: psycopg.Connection, db_url: str) -> None:
    """Unicode whitespace is no text anywhere: no vector, no request, no failure (it failed forever before)."""
    assert set(WHITESPACE) == {c for c in map(chr, range(0x110000)) if c.isspace()}
    conn.execute("CREATE TABLE docs (id int PRIMARY KEY, body text)")
    conn.execute(
        "INSERT INTO docs VALUES (1, %s), (2, %s), (3, %s), (4, %s)",
        ["\u00a0\u3000\x0c", "\u2003 \u2029", " \u00a0real text\u3000", "ok"],
    )
    with FakeOpenAI() as server:
        settings = make_settings(
            db_url, DOCS, provider="openai", openai_base_url=server.base_url, openai_api_key="k", dimensions=8
        )
        sync_once(settings, load_provider(settings))
        sent = [text for request in server.requests for text in request.inputs]
    assert sorted(stored(conn)) == [3, 4]
    assert stored(conn)[3][1] == sha256("real text")
    assert "real text" in sent and not any(not t.strip() for t in sent)
    assert queue_depth(conn) == 0


def test_run_waits_for_a_provider_that_is_down_at_start(conn: psycopg.Connection, docs: str, db_url: str) -> None:
    with FakeOpenAI() as server:
        server.fail_next(503, times=2)  # the dimension probe at start fails twice, then the server is back
        env = syncer_env(
            db_url,
            json.dumps([DOCS]),
            SYNCER_PROVIDER="openai",
            SYNCER_OPENAI_BASE_URL=server.base_url,
            SYNCER_MODEL="nomic-embed-text",
            SYNCER_MAX_RETRIES="0",
        )
        output, _ = (process := syncer_process(["run", "--once"], env)).communicate(timeout=60)
    assert process.returncode == 0, output
    assert output.count("provider not available (nomic-embed-text: HTTP 503") == 2
    assert "Traceback" not in output
    assert len(stored(conn)) == 4


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("not json", "syncer: invalid settings: SYNCER_SOURCES: is not JSON (Expecting value"),
        ("", "syncer: invalid settings: SYNCER_SOURCES: is empty; give a JSON list of sources"),
        ('[{"table": 1}]', "syncer: invalid settings: SYNCER_SOURCES[0].table: Input should be a valid string"),
    ],
)
def test_sources_that_are_not_json_fail_with_one_line(db_url: str, value: str, message: str) -> None:
    env = syncer_env(db_url, value, SYNCER_PROVIDER="tests.providers:HashEmbedder")
    output, _ = (process := syncer_process(["run"], env)).communicate(timeout=60)
    assert process.returncode == 2
    assert output.strip().splitlines() == [output.strip()] and output.startswith(message), output


def test_a_healthy_provider_after_faults_leaves_nothing_behind(
    conn: psycopg.Connection, docs: str, db_url: str
) -> None:
    settings = make_settings(db_url, DOCS)
    with pytest.raises(ProviderFatal):
        sync_once(settings, WrongSizeEmbedder())
    sync_once(settings, HashEmbedder())
    assert len(stored(conn)) == 4 and queue_depth(conn) == 0
