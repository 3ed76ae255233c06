"""Behind a transaction-pooling PgBouncer: apply, backfill, live edits and two workers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import psycopg
import pytest

from helpers import sha256, stored, syncer_env, syncer_process
from pgbouncer import pgbouncer

SOURCES = json.dumps([{"table": "docs", "columns": ["body"]}])
HASH = "tests.providers:HashEmbedder"


def installed() -> bool:
    return bool(shutil.which("pgbouncer")) or Path("/usr/sbin/pgbouncer").exists()


pytestmark = pytest.mark.skipif(
    not installed() and os.environ.get("SYNCER_REQUIRE_PGBOUNCER") != "1",
    reason="Debian's pgbouncer is not installed (`.ci/run` installs it and requires this test)",
)


def converged(conn: psycopg.Connection) -> bool:
    texts = dict(conn.execute("SELECT id, body FROM docs").fetchall())
    vectors = stored(conn)
    return len(vectors) == len(texts) and all(vectors[k][1] == sha256(t) for k, t in texts.items())


def test_syncs_through_a_transaction_pooling_pgbouncer(conn: psycopg.Connection, db_url: str) -> None:
    conn.execute("CREATE TABLE docs (id int PRIMARY KEY, body text)")
    conn.execute("INSERT INTO docs SELECT i, 'document ' || i FROM generate_series(1, 300) i")
    with pgbouncer(db_url) as pooled:
        env = syncer_env(
            pooled,
            SOURCES,
            SYNCER_PROVIDER=HASH,
            SYNCER_DATABASE_POOLED="true",
            SYNCER_BATCH_SIZE="20",
            SYNCER_POLL_INTERVAL="0.5",
            SYNCER_TEST_EMBED_DELAY="0.02",
        )
        output, _ = (apply := syncer_process(["apply"], env)).communicate(timeout=60)
        assert apply.returncode == 0, output
        workers = [
            syncer_process(["run"], env | {"SYNCER_LISTEN_DATABASE_URL": db_url, "SYNCER_APPLICATION_NAME": "w1"}),
            syncer_process(["run"], env | {"SYNCER_APPLICATION_NAME": "w2"}),  # poll only
        ]
        try:
            deadline = time.monotonic() + 60
            while not converged(conn):
                assert time.monotonic() < deadline, "backfill did not finish"
                time.sleep(0.2)
            with psycopg.connect(pooled, autocommit=True, prepare_threshold=None) as app:  # the app pooled too
                for i in range(1, 31):
                    app.execute("UPDATE docs SET body = %s WHERE id = %s", [f"edited {i}", i])
                app.execute("DELETE FROM docs WHERE id > 290")
                app.execute("INSERT INTO docs VALUES (1000, 'new')")
            deadline = time.monotonic() + 30
            while not converged(conn):
                assert time.monotonic() < deadline, "live edits were not all embedded"
                time.sleep(0.2)
        finally:
            outputs = []
            for worker in workers:
                worker.send_signal(signal.SIGTERM)
                outputs.append(worker.communicate(timeout=30)[0])
    for worker, output in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, output
        assert "ERROR" not in output and "Traceback" not in output and "prepared statement" not in output, output
    assert "polling only" in outputs[1]
    assert conn.execute("SELECT count(*) FROM syncer.docs_queue").fetchone() == (0,)
