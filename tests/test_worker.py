"""The long-running worker: wakes on NOTIFY or poll, survives lost connections, stops and dies cleanly."""

from __future__ import annotations

import json
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import psycopg
import pytest

from syncer import queue, schema, tables
from syncer.database import Database
from syncer.fragments import WAKE_LOCK
from syncer.indexing import Indexing
from syncer.settings import Settings
from syncer.sources import Source
from syncer.wakeup import Wakeup
from syncer.worker import Worker, WorkerOptions

from helpers import make_settings, queue_depth, sha256, stored, syncer_env, syncer_process
from providers import HashEmbedder, hash_vector

HASH_PROVIDER = "tests.providers:HashEmbedder"
INDEX = "SELECT to_regclass('public.syncer_docs_hnsw')"
ARMED = (  # a worker sleeps armed: it holds the wake lock (WAKE_LOCK, 0) exclusively
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = %s::oid AND objid = 0 "
    "AND mode = 'ExclusiveLock' AND granted"
)


def wait_for(predicate: Callable[[], object], timeout: float = 10.0, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(every)


@contextmanager
def running(settings: Settings) -> Iterator[Worker]:
    """A worker following changes in a background thread."""
    db = Database.from_settings(settings)
    provider = HashEmbedder(settings)
    applied = schema.apply(db, settings, provider)
    worker = Worker(db, provider, [s for s, _ in applied], WorkerOptions.from_settings(settings))
    thread = threading.Thread(target=worker.run, daemon=True, name="worker-under-test")
    thread.start()
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(10)
        assert not thread.is_alive(), "worker did not stop within 10s"


def embedded(conn: psycopg.Connection, key: int, text: str) -> Callable[[], bool]:
    return lambda: stored(conn).get(key, (None, None))[1] == sha256(text)


def test_notify_wakes_the_worker_long_before_the_poll(conn: psycopg.Connection, docs: str, db_url: str) -> None:
    settings = make_settings(db_url, {"table": "docs", "columns": ["body"]}, poll_interval=60)
    with running(settings) as worker:
        assert worker.wakeup.listening.wait(5)
        wait_for(lambda: queue_depth(conn) == 0)
        conn.execute("INSERT INTO docs (id, body) VALUES (100, 'fresh')")
        wait_for(embedded(conn, 100, "fresh"), timeout=5)


def test_a_trickle_of_edits_goes_in_a_few_batches(conn: psycopg.Connection, docs: str, db_url: str) -> None:
    """A busy worker that found only a few changes lingers: edits every 5 ms are not claimed one by one."""
    settings = make_settings(db_url, {"table": "docs", "columns": ["body"]}, linger_seconds=0.1)
    with running(settings) as worker:
        wait_for(lambda: queue_depth(conn) == 0)
        before = len(worker.provider.calls)  # type: ignore[attr-defined]
        edits, deadline = 0, time.monotonic() + 1.0
        while time.monotonic() < deadline:
            edits += 1
            conn.execute("UPDATE docs SET body = %s WHERE id = %s", [f"edit {edits}", edits % 4 + 1])
            time.sleep(0.005)
        wait_for(embedded(conn, edits % 4 + 1, f"edit {edits}"))
        batches = len(worker.provider.calls) - before  # type: ignore[attr-defined]
    assert batches <= 15 < edits / 2, (batches, edits)  # about one a linger, not one an edit


def test_poll_catches_a_change_whose_notification_was_missed(conn: psycopg.Connection, docs: str, db_url: str) -> None:
    settings = make_settings(db_url, {"table": "docs", "columns": ["body"]}, poll_interval=0.5)
    with running(settings) as worker:
        assert worker.wakeup.listening.wait(5)
        wait_for(lambda: queue_depth(conn) == 0)
        with conn.transaction():  # logged while the worker sleeps armed, but the NOTIFY never happens
            conn.execute("SET LOCAL session_replication_role = replica")  # no triggers
            conn.execute("INSERT INTO docs (id, body) VALUES (100, 'quiet')")
            conn.execute("INSERT INTO syncer.docs_log (id, changed) VALUES (ARRAY[100], 1)")
        wait_for(embedded(conn, 100, "quiet"), timeout=10)


def test_idle_workers_poll_with_a_query_and_claim_nothing(
    conn: psycopg.Connection, docs: str, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Asleep with nothing to do, a worker's poll only asks whether anything is ready (the one armed, and the
    other, which then tries to arm); a row whose backoff runs out meanwhile (no NOTIFY announces it) is still
    picked up by the next poll."""
    settings = make_settings(db_url, {"table": "docs", "columns": ["body"]}, poll_interval=0.1)
    claims: list[str] = []
    real_claim = queue.claim
    monkeypatch.setattr(queue, "claim", lambda *a, **k: claims.append(k["lane"]) or real_claim(*a, **k))
    with running(settings) as first, running(settings) as second:
        assert first.wakeup.listening.wait(5) and second.wakeup.listening.wait(5)
        wait_for(lambda: queue_depth(conn) == 0)
        time.sleep(0.3)  # the last drain's claims are done
        claims.clear()
        time.sleep(1.5)  # about 15 polls
        assert claims == []
        with conn.transaction():
            conn.execute("SET LOCAL session_replication_role = replica")  # no triggers, no NOTIFY
            conn.execute("UPDATE docs SET body = 'backed off' WHERE id = 1")
            conn.execute("INSERT INTO syncer.docs_queue (id, not_before) VALUES (1, now() + interval '0.5 s')")
        wait_for(embedded(conn, 1, "backed off"), timeout=10)
    assert claims


def test_a_stop_that_lands_between_two_passes_is_not_lost(
    conn: psycopg.Connection, docs: str, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SIGTERM's stop() may run between the loop's check of its stop flag and the next sleep: the worker must
    still stop at once, not sleep armed until a NOTIFY that may never come."""
    settings = make_settings(db_url, {"table": "docs", "columns": ["body"]}, poll_interval=0.2)
    passes = 0
    real_clear = Wakeup.clear

    def clear(wakeup: Wakeup) -> None:
        nonlocal passes
        passes += 1
        if passes == 2:
            worker.stop()  # after `while not self.stopping`, before the wake-up's flags are cleared
        real_clear(wakeup)

    monkeypatch.setattr(Wakeup, "clear", clear)
    with running(settings) as worker:
        thread = next(t for t in threading.enumerate() if t.name == "worker-under-test")
        assert worker.wakeup.listening.wait(5)
        wait_for(lambda: conn.execute(ARMED, [WAKE_LOCK]).fetchone() == (1,))  # asleep: a write wakes it
        conn.execute("NOTIFY syncer, 'docs'")  # a pass that finds nothing to do: the stop must not be lost
        wait_for(lambda: passes >= 2)
        thread.join(2)
        assert not thread.is_alive(), "the worker slept through its stop"


def test_no_wakeup_is_lost_while_writers_race_two_sleeping_workers(
    conn: psycopg.Connection, docs: str, db_url: str
) -> None:
    """With the poll a minute away only a NOTIFY wakes a worker: every write must still be embedded at once,
    whether it commits while a worker drains, arms, re-checks or sleeps."""
    settings = make_settings(db_url, {"table": "docs", "columns": ["body"]}, poll_interval=60)
    with running(settings) as first, running(settings) as second:
        assert first.wakeup.listening.wait(5) and second.wakeup.listening.wait(5)
        wait_for(lambda: queue_depth(conn) == 0)

        def write(writer: int) -> None:
            rng = random.Random(writer)
            with psycopg.connect(db_url, autocommit=True) as own:
                for n in range(40):
                    key, text = rng.randint(1, 4), f"writer {writer} edit {n}"
                    if rng.random() < 0.5:
                        key, text = 1000 * (writer + 1) + n, f"new row {writer}/{n}"
                        own.execute("INSERT INTO docs (id, body) VALUES (%s, %s)", [key, text])
                    else:
                        own.execute("UPDATE docs SET body = %s WHERE id = %s", [text, key])
                    time.sleep(rng.uniform(0, 0.03))

        writers = [threading.Thread(target=write, args=(w,)) for w in range(3)]
        for thread in writers:
            thread.start()
        for thread in writers:
            thread.join()
        final = dict(conn.execute("SELECT id, body FROM docs WHERE body IS NOT NULL").fetchall())
        wait_for(lambda: all(stored(conn).get(k, (None, None))[1] == sha256(t) for k, t in final.items()), 10)


def test_a_store_is_searched_exactly_until_it_holds_enough_vectors_for_its_index(
    conn: psycopg.Connection, docs: str, db_url: str
) -> None:
    """Below SYNCER_INDEX_MIN_ROWS no write pays for an HNSW index and searches are exact; the running worker
    builds the index once its edits have grown the store that far."""
    settings = make_settings(db_url, {"table": "docs", "columns": ["body"]}, index_min_rows=10)
    nearest = "SELECT id FROM syncer.search_docs(%s, 1)"
    with running(settings):
        wait_for(lambda: queue_depth(conn) == 0 and len(stored(conn)) == 4)
        conn.execute("INSERT INTO docs (id, body) SELECT i, 'row ' || i FROM generate_series(100, 104) i")
        wait_for(embedded(conn, 104, "row 104"))
        assert conn.execute(INDEX).fetchone() == (None,)  # 9 vectors
        assert conn.execute(nearest, [hash_vector("row 102")]).fetchone() == (102,)
        conn.execute("INSERT INTO docs (id, body) VALUES (105, 'row 105')")
        wait_for(lambda: conn.execute(INDEX).fetchone() != (None,))
        assert conn.execute(nearest, [hash_vector("row 102")]).fetchone() == (102,)


def test_a_store_growing_under_a_steady_stream_of_inserts_gets_its_index(
    conn: psycopg.Connection, docs: str, db_url: str
) -> None:
    """Inserts every 10 ms keep the worker from ever finding the queue empty: it still looks at the store's
    index every poll interval."""
    settings = make_settings(db_url, {"table": "docs", "columns": ["body"]}, index_min_rows=20)
    stop = threading.Event()

    def insert() -> None:
        with psycopg.connect(db_url, autocommit=True) as writer:
            key = 1000
            while not stop.wait(0.01):
                writer.execute("INSERT INTO docs (id, body) VALUES (%s, %s)", [key, f"row {key}"])
                key += 1

    inserter = threading.Thread(target=insert, daemon=True)
    with running(settings):
        inserter.start()
        try:
            wait_for(lambda: conn.execute(INDEX).fetchone() != (None,), timeout=15)
        finally:
            stop.set()
            inserter.join(5)


def test_a_store_too_small_for_its_index_is_counted_at_most_once_a_poll_interval(
    conn: psycopg.Connection, docs: str, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    counted: list[int] = []
    store_rows = tables.store_rows
    monkeypatch.setattr(tables, "store_rows", lambda c, s, cap: counted.append(cap) or store_rows(c, s, cap))
    with running(make_settings(db_url, {"table": "docs", "columns": ["body"]}, poll_interval=60)) as worker:
        assert worker.wakeup.listening.wait(5)
        wait_for(lambda: queue_depth(conn) == 0 and len(counted) == 2)  # apply's look, the backfill's
        for n in range(5):
            conn.execute("UPDATE docs SET body = %s WHERE id = 1", [f"edit {n}"])
            wait_for(embedded(conn, 1, f"edit {n}"))
    assert len(counted) == 2, counted  # not once an edit


def drained_by(db: Database) -> Callable[[Worker], None]:
    """One pass of ``run --once`` by a worker that lives on (its state carries over to the next)."""

    def drain(worker: Worker) -> None:
        time.sleep(worker.options.poll_interval)  # a look is due again
        with db.connect() as claim, db.connect() as write, ThreadPoolExecutor(1) as writer:
            worker.drain(claim, write, writer)

    return drain


def unindexed_worker(db_url: str) -> tuple[Worker, Callable[[Worker], None]]:
    """docs applied with its 4 rows to embed and no index yet (due at 3 vectors), a worker, and a drain of it."""
    docs_body = {"table": "docs", "columns": ["body"]}
    settings = make_settings(db_url, docs_body, index_min_rows=3, index_after_rows=1, poll_interval=0.01)
    db, provider = Database.from_settings(settings), HashEmbedder(settings)
    sources = [s for s, _ in schema.apply(db, settings, provider)]
    return Worker(db, provider, sources, WorkerOptions.from_settings(settings)), drained_by(db)


def test_a_look_at_the_index_cut_short_by_a_lost_connection_is_taken_again(
    conn: psycopg.Connection, docs: str, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker, drain = unindexed_worker(db_url)
    due, cut = Indexing.due, []

    def cutting(self: Indexing, c: psycopg.Connection, source: Source, dimensions: int) -> bool:
        if not cut:
            cut.append(c.info.backend_pid)
            conn.execute("SELECT pg_terminate_backend(%s)", cut)
        return due(self, c, source, dimensions)

    monkeypatch.setattr(Indexing, "due", cutting)
    with pytest.raises(psycopg.OperationalError):
        drain(worker)
    drain(worker)
    assert conn.execute(INDEX).fetchone() == ("syncer_docs_hnsw",)


def test_a_store_whose_build_another_worker_held_is_looked_at_again(
    conn: psycopg.Connection, docs: str, db_url: str
) -> None:
    """The other builder may die before its build commits: the index is not taken for built."""
    worker, drain = unindexed_worker(db_url)
    builder = 'SELECT pg_advisory_lock(hashtext(\'"public"."syncer_docs_hnsw"\'))'  # the index function's lock
    with psycopg.connect(db_url, autocommit=True) as other:
        other.execute(builder)
        drain(worker)
        assert conn.execute(INDEX).fetchone() == (None,)
    drain(worker)  # the other builder is gone, its build with it
    assert conn.execute(INDEX).fetchone() == ("syncer_docs_hnsw",)


def test_workers_that_each_stored_too_few_still_index_the_store_they_grew_together(
    conn: psycopg.Connection, docs: str, db_url: str
) -> None:
    settings = make_settings(db_url, {"table": "docs", "columns": ["body"]}, index_min_rows=10, poll_interval=0.01)
    db, provider = Database.from_settings(settings), HashEmbedder(settings)
    sources = [s for s, _ in schema.apply(db, settings, provider)]
    first, second = (Worker(db, provider, sources, WorkerOptions.from_settings(settings)) for _ in range(2))
    drain = drained_by(db)

    drain(first)  # the 4 rows with text: 6 short
    drain(second)
    conn.execute("INSERT INTO docs (id, body) SELECT i, 'row ' || i FROM generate_series(100, 103) i")
    drain(first)
    assert conn.execute(INDEX).fetchone() == (None,)  # 8
    conn.execute("INSERT INTO docs (id, body) SELECT i, 'row ' || i FROM generate_series(200, 203) i")
    drain(second)
    assert conn.execute("SELECT count(*) FROM docs_embeddings").fetchone() == (12,)
    assert conn.execute(INDEX).fetchone() == ("syncer_docs_hnsw",)


def test_poll_only_mode_never_listens(conn: psycopg.Connection, docs: str, db_url: str) -> None:
    settings = make_settings(db_url, {"table": "docs", "columns": ["body"]}, notify=False, poll_interval=0.3)
    with running(settings) as worker:
        triggers = conn.execute(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = 'docs'::regclass AND NOT tgisinternal ORDER BY 1"
        ).fetchall()
        names = ["deletes", "inserts", "mark", "truncate", "updates"]
        assert triggers == [(f"syncer_docs_{name}",) for name in names]  # none sends NOTIFY unless a worker arms
        assert not worker.wakeup.listening.is_set()
        conn.execute("UPDATE docs SET body = 'polled' WHERE id = 1")
        wait_for(embedded(conn, 1, "polled"), timeout=10)


def test_worker_reconnects_after_its_connections_are_killed(conn: psycopg.Connection, docs: str, db_url: str) -> None:
    settings = make_settings(
        db_url, {"table": "docs", "columns": ["body"]}, poll_interval=0.5, application_name="syncer-reconnect"
    )
    with running(settings) as worker:
        assert worker.wakeup.listening.wait(5)
        wait_for(lambda: queue_depth(conn) == 0)
        killed = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = %s",
            [settings.application_name],
        ).fetchone()[0]
        assert killed >= 2  # the claim, write and listen connections
        conn.execute("INSERT INTO docs (id, body) VALUES (100, 'after the outage')")
        wait_for(embedded(conn, 100, "after the outage"), timeout=20)
        wait_for(worker.wakeup.listening.is_set, timeout=10)


def fill(conn: psycopg.Connection, rows: int) -> None:
    conn.execute("CREATE TABLE docs (id int PRIMARY KEY, body text)")
    conn.execute("INSERT INTO docs SELECT i, 'document number ' || i FROM generate_series(1, %s) i", [rows])


def all_embedded(conn: psycopg.Connection, rows: int) -> bool:
    texts = dict(conn.execute("SELECT id, body FROM docs").fetchall())
    vectors = stored(conn)
    return len(vectors) == rows and all(vectors[k][1] == sha256(t) for k, t in texts.items())


def leased(conn: psycopg.Connection) -> int:
    if conn.execute("SELECT to_regclass('syncer.docs_queue')").fetchone()[0] is None:
        return 0  # the worker has not applied its schema yet
    return conn.execute("SELECT count(*) FROM syncer.docs_queue WHERE lease_until > now()").fetchone()[0]


SOURCES = json.dumps([{"table": "docs", "columns": ["body"]}])


def test_sigterm_finishes_the_batch_in_hand_and_exits(conn: psycopg.Connection, db_url: str) -> None:
    fill(conn, 50)
    env = syncer_env(
        db_url, SOURCES, SYNCER_PROVIDER=HASH_PROVIDER, SYNCER_BATCH_SIZE="10", SYNCER_TEST_EMBED_DELAY="1.5"
    )
    worker = syncer_process(["run"], env)
    try:
        wait_for(lambda: leased(conn) > 0, timeout=30)
        worker.send_signal(signal.SIGTERM)
        output, _ = worker.communicate(timeout=15)
    finally:
        worker.kill()
    assert worker.returncode == 0, output
    assert leased(conn) == 0  # settled or given back, never left for the lease to expire
    done = len(stored(conn))
    assert 10 <= done < 50 and queue_depth(conn) == 50 - done


def test_sigkill_mid_batch_loses_nothing(conn: psycopg.Connection, db_url: str) -> None:
    """The real model; a worker killed mid-batch leaves leases that expire, and another worker finishes."""
    fill(conn, 300)
    env = syncer_env(db_url, SOURCES, SYNCER_BATCH_SIZE="100", SYNCER_LEASE_SECONDS="4")
    victim = syncer_process(["run"], env)
    try:
        wait_for(lambda: leased(conn) > 0, timeout=120)
        time.sleep(0.3)
    finally:
        victim.kill()
        victim.communicate()
    assert leased(conn) > 0
    wait_for(lambda: leased(conn) == 0, timeout=10)
    rescuer = syncer_process(["run", "--once"], env)
    output, _ = rescuer.communicate(timeout=180)
    assert rescuer.returncode == 0, output
    assert all_embedded(conn, 300)
    assert queue_depth(conn) == 0


def test_two_workers_share_the_queue_and_never_write_the_same_row(conn: psycopg.Connection, db_url: str) -> None:
    fill(conn, 1000)
    conn.execute("CREATE TABLE writes (id int, worker text)")
    env = syncer_env(
        db_url, SOURCES, SYNCER_PROVIDER=HASH_PROVIDER, SYNCER_BATCH_SIZE="20", SYNCER_TEST_EMBED_DELAY="0.1"
    )
    workers = [syncer_process(["run", "--once"], env | {"SYNCER_APPLICATION_NAME": f"w{i}"}) for i in (1, 2)]
    # Audit every write to the store (the store exists once either worker has applied).
    wait_for(lambda: conn.execute("SELECT to_regclass('public.docs_embeddings')").fetchone()[0], timeout=30)
    conn.execute(
        "CREATE FUNCTION audit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "INSERT INTO public.writes VALUES (NEW.id, current_setting('application_name')); RETURN NULL; END $$"
    )
    conn.execute("CREATE TRIGGER audit AFTER INSERT OR UPDATE ON docs_embeddings FOR EACH ROW EXECUTE FUNCTION audit()")
    for worker in workers:
        output, _ = worker.communicate(timeout=120)
        assert worker.returncode == 0, output
    assert all_embedded(conn, 1000)
    rewritten = conn.execute("SELECT id FROM writes GROUP BY id HAVING count(*) > 1").fetchall()
    assert rewritten == []
    by_worker = dict(conn.execute("SELECT worker, count(*) FROM writes GROUP BY worker").fetchall())
    assert set(by_worker) == {"w1", "w2"}, by_worker


def test_run_once_exits_zero_when_drained(conn: psycopg.Connection, docs: str, db_url: str) -> None:
    sources = json.dumps([{"table": "docs", "columns": ["title", "body"]}])
    env = syncer_env(db_url, sources, SYNCER_PROVIDER=HASH_PROVIDER)
    output, _ = (process := syncer_process(["run", "--once"], env)).communicate(timeout=60)
    assert process.returncode == 0, output
    assert len(stored(conn)) == 5 and queue_depth(conn) == 0


def test_run_with_several_processes_shares_the_work(conn: psycopg.Connection, db_url: str) -> None:
    fill(conn, 200)
    conn.execute("CREATE TABLE writers (pid int)")
    env = syncer_env(
        db_url, SOURCES, SYNCER_PROVIDER=HASH_PROVIDER, SYNCER_BATCH_SIZE="10", SYNCER_TEST_EMBED_DELAY="0.05"
    )
    output, _ = (apply := syncer_process(["apply"], env)).communicate(timeout=60)
    assert apply.returncode == 0, output
    conn.execute(
        "CREATE FUNCTION public.writer() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "INSERT INTO public.writers VALUES (pg_backend_pid()); RETURN NULL; END $$"
    )
    conn.execute("CREATE TRIGGER writer AFTER INSERT ON docs_embeddings FOR EACH STATEMENT EXECUTE FUNCTION writer()")
    output, _ = (run := syncer_process(["run", "--once", "--processes", "2"], env)).communicate(timeout=120)
    assert run.returncode == 0, output
    assert all_embedded(conn, 200) and queue_depth(conn) == 0
    assert conn.execute("SELECT count(DISTINCT pid) FROM writers").fetchone()[0] >= 2
