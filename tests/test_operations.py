"""Operating it: metrics, health and readiness over HTTP, JSON logs, `status --json`, `--max-lag`, signals."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers import syncer_env, syncer_process
from openai_server import FakeOpenAI

SOURCES = json.dumps([{"table": "docs", "columns": ["body"]}])
METRICS = (
    "syncer_queue_rows",
    "syncer_oldest_pending_seconds",
    "syncer_rows_total",
    "syncer_freshness_seconds",
    "syncer_embed_seconds",
    "syncer_provider_requests_total",
    "syncer_tokens_total",
    "syncer_last_progress_timestamp_seconds",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def samples(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics: (name, sorted labels) -> value."""
    _, text = get(f"{base}/metrics")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def families(base: str) -> set[str]:
    _, text = get(f"{base}/metrics")
    return {family.name for family in text_string_to_metric_families(text)}


def value(scraped: dict, name: str, **labels: str) -> float:
    return scraped.get((name, tuple(sorted(labels.items()))), 0.0)


def wait_for(predicate: Callable[[], object], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not within {timeout}s"
        time.sleep(0.1)


@contextmanager
def worker(db_url: str, **env: str) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """`syncer run` with its HTTP endpoint; yields the endpoint's base URL and the process."""
    port = free_port()
    environment = syncer_env(db_url, SOURCES, SYNCER_HTTP_PORT=str(port), **env)
    process = syncer_process(["run"], environment)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(base) or process.poll() is not None)
        assert process.poll() is None, process.communicate()[0]
        yield base, process
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
        assert process.returncode == 0, output


def _answers(base: str) -> bool:
    try:
        return get(f"{base}/healthz")[0] in (200, 503)
    except OSError:
        return False


def fill(conn: psycopg.Connection, rows: int) -> None:
    conn.execute("CREATE TABLE docs (id int PRIMARY KEY, body text)")
    conn.execute("INSERT INTO docs SELECT i, 'document ' || i FROM generate_series(1, %s) i", [rows])


def test_a_scrape_during_a_backfill_shows_the_queue_draining(conn: psycopg.Connection, db_url: str) -> None:
    fill(conn, 120)
    with worker(
        db_url,
        SYNCER_PROVIDER="tests.providers:HashEmbedder",
        SYNCER_BATCH_SIZE="10",
        SYNCER_TEST_EMBED_DELAY="0.1",
    ) as (base, _):
        wait_for(lambda: value(samples(base), "syncer_rows_total", source="docs", outcome="stored") > 0)
        during = samples(base)
        assert 0 < value(during, "syncer_queue_rows", source="docs", state="ready") < 120
        assert value(during, "syncer_oldest_pending_seconds", source="docs") > 0
        wait_for(lambda: value(samples(base), "syncer_rows_total", source="docs", outcome="stored") == 120)
        after = samples(base)
        assert families(base) >= {name.removesuffix("_total") for name in METRICS}
        assert value(after, "syncer_queue_rows", source="docs", state="ready") == 0
        assert value(after, "syncer_freshness_seconds_count", source="docs") == 120
        assert value(after, "syncer_embed_seconds_count", provider="tests.providers:HashEmbedder") >= 12
        assert value(after, "syncer_provider_requests_total", provider="tests.providers:HashEmbedder", outcome="ok")
        assert time.time() - value(after, "syncer_last_progress_timestamp_seconds") < 60
        assert get(f"{base}/readyz") == (200, '{"status":"ok","provider":"test/hash-16"}')
        assert get(f"{base}/healthz")[0] == 200


def test_a_poison_row_shows_up_as_failed_then_dead(conn: psycopg.Connection, db_url: str) -> None:
    fill(conn, 5)
    conn.execute("UPDATE docs SET body = 'POISON' WHERE id = 3")
    with worker(
        db_url,
        SYNCER_PROVIDER="tests.providers:PoisonEmbedder",
        SYNCER_MAX_ATTEMPTS="2",
        SYNCER_RETRY_BASE_SECONDS="0.2",
        SYNCER_RETRY_MAX_SECONDS="0.2",
        SYNCER_POLL_INTERVAL="0.2",
    ) as (base, _):
        wait_for(lambda: value(samples(base), "syncer_rows_total", source="docs", outcome="dead") == 1)
        scraped = samples(base)
        assert value(scraped, "syncer_rows_total", source="docs", outcome="failed") == 1
        assert value(scraped, "syncer_rows_total", source="docs", outcome="stored") == 4
        assert value(scraped, "syncer_queue_rows", source="docs", state="dead") == 1
        assert value(scraped, "syncer_oldest_pending_seconds", source="docs") == 0  # the dead row is not lag


def test_a_stuck_loop_turns_healthz_to_503(conn: psycopg.Connection, db_url: str) -> None:
    fill(conn, 3)
    conn.execute("UPDATE docs SET body = 'HANG' WHERE id = 2")
    port = free_port()
    env = syncer_env(
        db_url,
        SOURCES,
        SYNCER_HTTP_PORT=str(port),
        SYNCER_PROVIDER="tests.providers:HangingEmbedder",
        SYNCER_MAX_BATCH_SECONDS="1",
    )
    process = syncer_process(["run"], env)
    try:
        wait_for(lambda: _answers(f"http://127.0.0.1:{port}"))
        wait_for(lambda: get(f"http://127.0.0.1:{port}/healthz")[0] == 503, timeout=20)
        status, body = get(f"http://127.0.0.1:{port}/healthz")
        assert json.loads(body)["status"] == "stuck"
    finally:
        process.kill()
        process.communicate()


def test_readyz_waits_for_the_provider_and_sigterm_stops_start_up(conn: psycopg.Connection, db_url: str) -> None:
    fill(conn, 3)
    port = free_port()
    with FakeOpenAI() as server:
        server.fail_next(503, times=1000)  # the provider stays down: start-up keeps waiting for it
        env = syncer_env(
            db_url,
            SOURCES,
            SYNCER_HTTP_PORT=str(port),
            SYNCER_PROVIDER="openai",
            SYNCER_OPENAI_BASE_URL=server.base_url,
            SYNCER_MODEL="nomic-embed-text",
            SYNCER_MAX_RETRIES="0",
        )
        process = syncer_process(["run"], env)
        wait_for(lambda: _answers(f"http://127.0.0.1:{port}"))
        status, body = get(f"http://127.0.0.1:{port}/readyz")
        assert status == 503 and json.loads(body)["provider"] == "loading"
        assert get(f"http://127.0.0.1:{port}/healthz")[0] == 200  # waiting for a provider is not stuck
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=15)
    assert process.returncode == 0 and time.monotonic() - started < 5, output


def test_json_logs_one_object_a_line_and_no_http_client_chatter(conn: psycopg.Connection, db_url: str) -> None:
    fill(conn, 50)
    with FakeOpenAI() as server:
        env = syncer_env(
            db_url,
            SOURCES,
            SYNCER_PROVIDER="openai",
            SYNCER_OPENAI_BASE_URL=server.base_url,
            SYNCER_MODEL="nomic-embed-text",
            SYNCER_BATCH_SIZE="10",
            SYNCER_LOG_FORMAT="json",
        )
        output, _ = (process := syncer_process(["run", "--once"], env)).communicate(timeout=60)
        requests = len(server.requests)
    assert process.returncode == 0, output
    lines = [json.loads(line) for line in output.splitlines()]
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    queued = [line for line in lines if line["message"] == "docs: 50 rows queued"]
    assert queued and queued[0]["source"] == "docs" and queued[0]["level"] == "INFO"
    assert requests >= 5 and not any("HTTP Request" in line["message"] for line in lines)


def test_status_json_and_max_lag(conn: psycopg.Connection, db_url: str) -> None:
    fill(conn, 4)
    env = syncer_env(db_url, SOURCES, SYNCER_PROVIDER="tests.providers:HashEmbedder")
    output, _ = (apply := syncer_process(["apply"], env)).communicate(timeout=60)
    assert apply.returncode == 0, output
    time.sleep(0.2)  # the backfill's changes are older than --max-lag now
    out, _ = (proc := syncer_process(["status", "--json", "--max-lag", "0.1"], env)).communicate(timeout=60)
    assert proc.returncode == 1
    document, _, complaint = out.rpartition("]")
    [docs] = json.loads(document + "]")
    assert docs["source"] == "docs" and docs["rows"] == 4 and docs["rows_estimated"] is False
    assert docs["queue"]["ready"] == 4 and docs["queue"]["pending"] == 4 and docs["queue"]["oldest_seconds"] > 0.1
    assert "syncer: pending longer than 0.1s: docs" in complaint
    out, _ = (proc := syncer_process(["status", "--max-lag", "3600"], env)).communicate(timeout=60)
    assert proc.returncode == 0, out


@pytest.mark.parametrize("rows", [150_000])
def test_status_estimates_large_tables(conn: psycopg.Connection, db_url: str, rows: int) -> None:
    fill(conn, rows)
    conn.execute("ANALYZE docs")
    env = syncer_env(db_url, SOURCES, SYNCER_PROVIDER="tests.providers:HashEmbedder", SYNCER_INDEX_AFTER_ROWS="0")
    assert syncer_process(["apply"], env).wait(120) == 0
    out, _ = (proc := syncer_process(["status", "--json"], env)).communicate(timeout=60)
    [docs] = json.loads(out[out.index("[") :])
    assert docs["rows_estimated"] is True and abs(docs["rows"] - rows) < rows * 0.1
    assert docs["queue"]["ready"] == rows  # queues are counted exactly
