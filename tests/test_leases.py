"""Leases never strand work or pay twice: renewed while in hand, given back at once, bounded by bytes."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest

from syncer import queue, schema
from syncer.database import Database
from syncer.lanes import RECHECK, Lanes
from syncer.settings import Settings
from syncer.worker import Worker, WorkerOptions

from helpers import make_settings, queue_depth, sha256, stored, sync_once, whole
from providers import HashEmbedder, hash_vector

DOCS = {"table": "docs", "columns": ["body"]}
FAILURES = queue.Failures(1.0, 1.0, 10)


def fill(conn: psycopg.Connection, rows: int, body: str = "'document number ' || i") -> None:
    conn.execute("CREATE TABLE docs (id int PRIMARY KEY, body text)")
    conn.execute(f"INSERT INTO docs SELECT i, {body} FROM generate_series(1, %s) i", [rows])


def all_embedded(conn: psycopg.Connection, rows: int) -> bool:
    texts = dict(conn.execute("SELECT id, body FROM docs").fetchall())
    vectors = stored(conn)
    return len(vectors) == rows and all(vectors[k][1] == sha256(t) for k, t in texts.items())


def wait_for(predicate, timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not within {timeout}s"
        time.sleep(0.05)


@contextmanager
def workers(settings: Settings, provider: HashEmbedder, count: int = 1) -> Iterator[list[Worker]]:
    db = Database.from_settings(settings)
    applied = [s for s, _ in schema.apply(db, settings, provider)]
    started = [Worker(db, provider, applied, WorkerOptions.from_settings(settings)) for _ in range(count)]
    threads = [threading.Thread(target=w.run, daemon=True) for w in started]
    for thread in threads:
        thread.start()
    try:
        yield started
    finally:
        for worker in started:
            worker.stop()
        for thread in threads:
            thread.join(15)
            assert not thread.is_alive()


@contextmanager
def editing(db_url: str, every: float) -> Iterator[None]:
    """Rows 1 to 10 edited in turn every ``every`` seconds, on a connection of their own, while the block runs."""
    stop = threading.Event()

    def edit() -> None:
        with psycopg.connect(db_url, autocommit=True) as writer:
            n = 0
            while not stop.wait(every):
                n += 1
                writer.execute("UPDATE docs SET body = %s WHERE id = %s", [f"edit {n}", n % 10 + 1])

    editor = threading.Thread(target=edit)
    editor.start()
    try:
        yield
    finally:
        stop.set()
        editor.join()


def backfilled(conn: psycopg.Connection, rows: int) -> bool:
    """Every row but the ten being edited has a vector (an edited row may wait for the edits to pause: a row
    edited faster than it can be embedded is never stored meanwhile)."""
    return sum(1 for key in stored(conn) if key > 10) == rows - 10


def test_a_slow_provider_with_a_short_lease_converges_and_pays_once(conn: psycopg.Connection, db_url: str) -> None:
    """4.5 s per batch against a 3 s lease: renewed in hand, never taken over by the second worker."""
    fill(conn, 20)
    settings = make_settings(db_url, DOCS, batch_size=5, lease_seconds=3, poll_interval=0.2)
    provider = HashEmbedder()
    provider.delay = 4.5
    with workers(settings, provider, count=2):
        wait_for(lambda: all_embedded(conn, 20), timeout=30)
    assert sorted(provider.embedded) == sorted(f"document number {i}" for i in range(1, 21))  # each row once


def test_a_renewal_in_flight_never_makes_a_settle_skip_its_own_keys(
    conn: psycopg.Connection, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The keeper's renewal holds the batch's rows for a moment; a settle then must wait, not skip them as
    held by another (which gave them back to be embedded and paid for again)."""
    real_renew = queue.renew

    def slow_renew(conn: psycopg.Connection, batch: queue.Batch, lease_seconds: float) -> int:
        with conn.transaction():  # the rows stay locked while the renewal "takes its time"
            renewed = real_renew(conn, batch, lease_seconds)
            time.sleep(0.3)
        return renewed

    monkeypatch.setattr(queue, "renew", slow_renew)
    fill(conn, 40)
    settings = make_settings(db_url, DOCS, batch_size=5, lease_seconds=1.5, poll_interval=0.2)
    provider = HashEmbedder()
    provider.delay = 0.2
    with workers(settings, provider):
        wait_for(lambda: all_embedded(conn, 40), timeout=30)
    assert sorted(provider.embedded) == sorted(f"document number {i}" for i in range(1, 41))  # each row once


def test_batches_in_hand_are_given_back_when_the_connections_die(conn: psycopg.Connection, db_url: str) -> None:
    """A killed connection (as in a database restart) costs seconds, not the 300 s lease."""
    fill(conn, 30)
    settings = make_settings(
        db_url, DOCS, batch_size=10, lease_seconds=300, poll_interval=0.5, application_name="syncer-dies"
    )
    provider = HashEmbedder()
    provider.delay = 1.0
    with workers(settings, provider):
        wait_for(lambda: conn.execute("SELECT count(*) FROM syncer.docs_queue WHERE lease_token IS NOT NULL")
                 .fetchone()[0] > 0, timeout=10)  # fmt: skip
        killed = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'syncer-dies'"
        ).fetchone()[0]
        assert killed >= 2
        wait_for(lambda: all_embedded(conn, 30), timeout=20)
    assert queue_depth(conn) == 0


def test_a_settle_that_finds_its_lease_taken_writes_nothing_and_says_so(
    conn: psycopg.Connection, docs: str, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(db_url, DOCS)
    provider = HashEmbedder()
    db = Database.from_settings(settings)
    [(source, _)] = schema.apply(db, settings, provider)
    with db.connect() as zombie_conn, db.connect() as other_conn:
        zombie = queue.claim(zombie_conn, source, provider.model_id, 10, 10**6, lease_seconds=0.2, lane="bulk")
        time.sleep(0.3)  # the zombie's lease runs out, unrenewed
        other = queue.claim(other_conn, source, provider.model_id, 10, 10**6, lease_seconds=60, lane="bulk")
        assert len(other) == 4
        bogus = {c.seq: whole(c.text, -hash_vector(c.text)) for c in zombie.embed}
        with caplog.at_level(logging.WARNING):
            outcome = queue.settle(zombie_conn, zombie, provider.model_id, bogus, {}, FAILURES)
        assert (outcome.stored, outcome.released, outcome.taken) == (0, 0, 4)
        assert "docs: the lease on 4 rows ran out" in caplog.text
        good = {c.seq: whole(c.text, hash_vector(c.text)) for c in other.embed}
        assert queue.settle(other_conn, other, provider.model_id, good, {}, FAILURES).stored == 4
    bodies = dict(conn.execute("SELECT id, body FROM docs WHERE body IS NOT NULL").fetchall())
    assert {k: v[1] for k, v in stored(conn).items()} == {k: sha256(b) for k, b in bodies.items()}


def test_the_deferred_index_waits_for_rows_in_hand(conn: psycopg.Connection, db_url: str) -> None:
    fill(conn, 50)
    settings = make_settings(db_url, DOCS, index_after_rows=10, index_min_rows=0)
    provider = HashEmbedder()
    db = Database.from_settings(settings)
    [(source, _)] = schema.apply(db, settings, provider)
    index = "SELECT to_regclass('public.syncer_docs_hnsw')"
    with db.connect() as other_conn:
        other = queue.claim(other_conn, source, provider.model_id, 100, 10**7, lease_seconds=60, lane="bulk")
        sync_once(settings, provider)  # finds nothing to claim: another worker is still loading the store
        assert conn.execute(index).fetchone() == (None,)
        vectors = {c.seq: whole(c.text, hash_vector(c.text)) for c in other.embed}
        assert queue.settle(other_conn, other, provider.model_id, vectors, {}, FAILURES).stored == 50
    sync_once(settings, provider)
    assert conn.execute(index).fetchone() == ("syncer_docs_hnsw",)


def test_a_claim_is_bounded_by_bytes_of_text(conn: psycopg.Connection, db_url: str) -> None:
    fill(conn, 10, body="repeat(chr(97 + i), 1000000)")
    conn.execute("UPDATE docs SET body = repeat('z', 3000000) WHERE id = 5")  # over the budget: comes alone
    settings = make_settings(db_url, DOCS, batch_bytes=2_500_000)
    provider = HashEmbedder()
    sync_once(settings, provider)
    assert all_embedded(conn, 10)
    sizes = [len(call) for call in provider.calls]
    assert max(sizes) == 2 and sum(sizes) == 10
    assert [len(call) for call in provider.calls if any(len(t) == 3_000_000 for t in call)] == [1]


def test_claims_take_lanes_live_edits_oldest_first(conn: psycopg.Connection, db_url: str) -> None:
    fill(conn, 1000)
    settings = make_settings(db_url, DOCS)
    provider = HashEmbedder()
    db = Database.from_settings(settings)
    [(source, queued)] = schema.apply(db, settings, provider)
    assert queued == 1000
    conn.execute("UPDATE docs SET body = 'edited ' || id WHERE id > 980")  # 20 live edits, queued last

    def claim(c: psycopg.Connection, lane: queue.Lane) -> list[int]:
        return sorted(int(ch.key) for ch in queue.claim(c, source, provider.model_id, 10, 10**6, 60, lane=lane).embed)

    with db.connect() as c:
        assert claim(c, "live") == list(range(981, 991))
        bulk = claim(c, "bulk")
        both = claim(c, "both")  # the live ones first, and a share for the backfill: never starved
        assert claim(c, "live") == [1000]
    assert len(bulk) == 10 and all(k <= 980 for k in bulk)
    assert [k for k in both if k > 980] == list(range(991, 1000)) and len(both) == 10


def test_edits_go_alone_while_that_is_cheap_and_ride_with_the_backfill_when_not() -> None:
    lanes = Lanes()
    assert lanes.order() == ("live", "bulk")  # nothing timed yet
    lanes.observe("bulk", 1.0, 500)
    assert lanes.limit("bulk", 512) == 512  # no edit yet: whole batches
    lanes.observe("live", 0.01, 1)
    assert lanes.order() == ("live", "bulk")  # a local model: a few texts take milliseconds
    assert lanes.limit("bulk", 512) == 250 and lanes.limit("live", 512) == 512  # cut to about 0.5 s
    lanes.timed -= RECHECK
    assert lanes.order() == ("live", "bulk") and lanes.limit("bulk", 512) == 512  # edits stopped: whole again
    lanes = Lanes()
    lanes.observe("live", 1.2, 1)
    lanes.observe("bulk", 1.3, 512)
    assert lanes.order() == ("both",)  # a remote API: one text takes a request, as hundreds do
    lanes.timed -= RECHECK
    assert lanes.order() == ("live", "bulk")  # timed again now and then


def test_edits_ride_with_the_backfill_when_a_call_costs_the_same_for_one_text(
    conn: psycopg.Connection, db_url: str
) -> None:
    fill(conn, 1000)
    settings = make_settings(db_url, DOCS, batch_size=100, poll_interval=0.2)
    provider = HashEmbedder()
    provider.delay = 0.3  # per call, whatever it holds: a remote API's latency
    with workers(settings, provider):
        with editing(db_url, every=0.1):
            wait_for(lambda: backfilled(conn, 1000), timeout=30)
        wait_for(lambda: all_embedded(conn, 1000), timeout=30)
    calls = provider.calls
    last_bulk = max(i for i, call in enumerate(calls) if any(t.startswith("document") for t in call))
    alone = [call for call in calls[:last_bulk] if all(t.startswith("edit ") for t in call)]
    assert len(alone) <= 2, alone  # timed (once more if no bulk batch was timed yet), then they rode along


def test_an_edit_during_a_backfill_waits_for_one_bulk_batch_and_goes_alone(
    conn: psycopg.Connection, db_url: str
) -> None:
    fill(conn, 1000)
    settings = make_settings(db_url, DOCS, batch_size=100, poll_interval=0.2)
    provider = HashEmbedder()
    provider.delay = 0.5  # 5 s of backfill
    with workers(settings, provider):
        wait_for(lambda: len(provider.calls) >= 1, timeout=10)
        conn.execute("UPDATE docs SET body = 'edited' WHERE id = 1000")  # its backfill comes last
        wait_for(lambda: stored(conn).get(1000, (None, None))[1] == sha256("edited"), timeout=10)
        assert len(stored(conn)) < 1000  # well ahead of the backfill
        wait_for(lambda: all_embedded(conn, 1000), timeout=30)
    assert ["edited"] in provider.calls  # a batch of its own
    assert sum(len(call) for call in provider.calls) == 1000  # the backfill never embedded its old text


def test_a_backfill_keeps_moving_under_a_stream_of_edits(conn: psycopg.Connection, db_url: str) -> None:
    fill(conn, 300)
    settings = make_settings(db_url, DOCS, batch_size=50, poll_interval=0.2)
    provider = HashEmbedder()
    provider.delay = 0.2
    with workers(settings, provider):
        with editing(db_url, every=0.02):
            wait_for(lambda: backfilled(conn, 300), timeout=30)  # the bulk lane gets its turn
        wait_for(lambda: all_embedded(conn, 300), timeout=30)


def test_a_backfill_is_queued_shortest_texts_first(conn: psycopg.Connection, db_url: str) -> None:
    """Claimed windows then hold texts of similar length: the model pads little (2.5x faster on this CPU)."""
    fill(conn, 300, body="repeat('word ', (i * 7919) %% 300 + 1)")
    settings = make_settings(db_url, DOCS)
    schema.apply(Database.from_settings(settings), settings, HashEmbedder())
    lengths = [
        r[0]
        for r in conn.execute("SELECT length(d.body) FROM syncer.docs_queue q JOIN docs d USING (id) ORDER BY q.seq")
    ]
    assert lengths == sorted(lengths)
