"""Re-embedding with another model: search serves the old store until one atomic switch; nothing mixes."""

from __future__ import annotations

import numpy as np
import psycopg
import pytest

from syncer import reembed, schema
from syncer.database import Database
from syncer.errors import ProviderFatal, StoreChanged
from syncer.settings import Settings
from syncer.sources import Source
from syncer.worker import Worker, WorkerOptions

from helpers import make_settings, queue_depth, sha256, stored, sync_once
from providers import Hash32Embedder, HashEmbedder, OtherHashEmbedder, hash_vector


def synced(db_url: str) -> tuple[Settings, Database, Source]:
    settings = make_settings(db_url, {"table": "docs", "columns": ["body"]}, batch_size=2, index_min_rows=0)
    sync_once(settings, HashEmbedder())
    db = Database.from_settings(settings)
    [source] = schema.resolve_all(db, settings)
    return settings, db, source


def search_ids(conn: psycopg.Connection, vector: np.ndarray) -> list[int]:
    return [r[0] for r in conn.execute("SELECT id FROM syncer.search_docs(%s, 10)", [vector])]


def test_reembed_switches_store_and_model_at_once(conn: psycopg.Connection, docs: str, db_url: str) -> None:
    settings, db, source = synced(db_url)
    assert reembed.reembed(db, settings, Hash32Embedder(), source) == 4

    vectors = stored(conn)
    assert {k: (v[0].shape, v[2]) for k, v in vectors.items()} == {k: ((32,), "test/hash-32") for k in (1, 2, 3, 4)}
    body = conn.execute("SELECT body FROM docs WHERE id = 2").fetchone()[0]
    np.testing.assert_allclose(vectors[2][0], hash_vector(body, 32), rtol=1e-6)
    assert conn.execute("SELECT model, dimensions, reembed_model FROM syncer.sources").fetchone() == (
        "test/hash-32",
        32,
        None,
    )
    leftovers = "SELECT to_regclass('syncer.docs_next'), to_regclass('syncer.docs_reembed')"
    assert conn.execute(leftovers).fetchone() == (None, None)
    assert search_ids(conn, hash_vector(body, 32))[0] == 2
    assert conn.execute("SELECT to_regclass('public.syncer_docs_hnsw')::text").fetchone() == ("syncer_docs_hnsw",)


class SearchingEmbedder(Hash32Embedder):
    """While the new store is being built: search the old one and edit a row."""

    def __init__(self, conn: psycopg.Connection) -> None:
        super().__init__()
        self.conn = conn
        self.seen: list[int] = []

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        if not self.calls:
            old_query = hash_vector("Knead flour, water, salt and yeast; let the dough rise, then bake.", 16)
            self.seen = search_ids(self.conn, old_query)
            self.conn.execute("UPDATE docs SET body = 'edited during the re-embed' WHERE id = 1")
        return super().embed_documents(texts)


def test_search_serves_the_old_store_and_edits_are_caught_up(conn: psycopg.Connection, docs: str, db_url: str) -> None:
    settings, db, source = synced(db_url)
    provider = SearchingEmbedder(conn)
    reembed.reembed(db, settings, provider, source)

    assert provider.seen[0] == 2 and len(provider.seen) == 4  # the old store answered while the new one filled
    assert stored(conn)[1][1] == sha256("edited during the re-embed")
    sync_once(settings, Hash32Embedder())  # the live queue still holds the edit: already embedded, skipped
    assert stored(conn)[1][2] == "test/hash-32"
    assert queue_depth(conn) == 0


class FailingEmbedder(Hash32Embedder):
    """Stops the re-embed after the first batch, as a crash or an exhausted quota would."""

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        if self.calls:
            raise ProviderFatal("quota exhausted")
        return super().embed_documents(texts)


def test_interrupted_reembed_resumes_where_it_stopped(conn: psycopg.Connection, docs: str, db_url: str) -> None:
    settings, db, source = synced(db_url)
    with pytest.raises(ProviderFatal):
        reembed.reembed(db, settings, FailingEmbedder(), source)
    assert conn.execute("SELECT count(*) FROM syncer.docs_next").fetchone() == (2,)
    assert {v[2] for v in stored(conn).values()} == {"test/hash-16"}  # the live store is untouched
    assert search_ids(conn, hash_vector("x", 16))  # and still serves

    resumed = Hash32Embedder()
    assert reembed.reembed(db, settings, resumed, source) == 2
    assert len(resumed.embedded) == 2
    assert {v[2] for v in stored(conn).values()} == {"test/hash-32"}


@pytest.mark.parametrize("new_model", [Hash32Embedder, OtherHashEmbedder])
def test_a_worker_still_on_the_old_model_stops_instead_of_mixing(
    conn: psycopg.Connection, docs: str, db_url: str, new_model: type[HashEmbedder]
) -> None:
    settings, db, source = synced(db_url)
    reembed.reembed(db, settings, new_model(), source)
    conn.execute("UPDATE docs SET body = 'after the switch' WHERE id IN (3, 4)")

    one_by_one = settings.model_copy(update={"batch_size": 1})  # a second batch is in hand when the first fails
    old_worker = Worker(db, HashEmbedder(), [source], WorkerOptions.from_settings(one_by_one))  # started before
    with pytest.raises(StoreChanged, match="re-embedded"):
        old_worker.run(once=True)
    assert {v[2] for v in stored(conn).values()} == {new_model.model_id}
    assert conn.execute("SELECT count(*) FROM syncer.docs_queue WHERE lease_token IS NOT NULL").fetchone() == (0,)

    sync_once(settings, new_model())
    assert stored(conn)[3][1] == sha256("after the switch")
