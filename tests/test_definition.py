"""Two text definitions never mix in one store: recorded when applied, refused when different, adopted on request."""

from __future__ import annotations

import json

import psycopg
import pytest

from syncer import schema
from syncer.database import Database
from syncer.errors import StoreChanged
from syncer.settings import Settings
from syncer.worker import Worker, WorkerOptions

from helpers import make_settings, queue_depth, sha256, stored, sync_once, syncer_env, syncer_process
from providers import HashEmbedder, HookedEmbedder

BODY = {"table": "docs", "columns": ["body"]}
TITLE_BODY = {"table": "docs", "columns": ["title", "body"]}
HASH = "tests.providers:HashEmbedder"


def run(db_url: str, source: dict, *args: str) -> tuple[int, str]:
    env = syncer_env(db_url, json.dumps([source]), SYNCER_PROVIDER=HASH)
    output, _ = (process := syncer_process(list(args), env)).communicate(timeout=60)
    return process.returncode, output


def texts(conn: psycopg.Connection, *columns: str) -> dict[int, bytes]:
    """Hashes of each row's text under ``columns`` (NULL and empty columns skipped, as syncer does)."""
    rows = conn.execute("SELECT id, to_jsonb(docs) FROM docs").fetchall()
    joined = {i: "\n\n".join(row[c].strip() for c in columns if row[c] and row[c].strip()) for i, row in rows}
    return {i: sha256(text) for i, text in joined.items() if text}


def test_a_worker_with_another_definition_refuses_to_start(conn: psycopg.Connection, docs: str, db_url: str) -> None:
    sync_once(make_settings(db_url, BODY), HashEmbedder())
    code, output = run(db_url, TITLE_BODY, "run", "--once")
    assert code == 2
    assert output.strip().splitlines()[-1] == (
        "syncer: source 'docs': the configured text (columns title, body; key id) differs from the applied one "
        "(columns body; key id); to adopt it run `syncer apply --adopt` (rows whose text changes are re-embedded; "
        "workers still on the old definition stop writing)"
    )
    conn.execute("UPDATE docs SET title = 'retitled'")  # the applied triggers stand: titles are not watched
    assert queue_depth(conn) == 0
    assert {k: v[1] for k, v in stored(conn).items()} == texts(conn, "body")


def test_adopting_a_definition_requeues_only_rows_whose_text_changes(
    conn: psycopg.Connection, docs: str, db_url: str
) -> None:
    sync_once(make_settings(db_url, BODY), HashEmbedder())
    same_text = {"table": "docs", "template": "{body}"}
    code, output = run(db_url, same_text, "apply", "--adopt")
    assert (code, output.splitlines()[-1]) == (0, "docs: public.docs -> public.docs_embeddings, 0 rows queued")
    code, output = run(db_url, TITLE_BODY, "apply", "--adopt")  # row 5 has a title and no body: text now
    assert (code, output.splitlines()[-1]) == (0, "docs: public.docs -> public.docs_embeddings, 5 rows queued")
    provider = HashEmbedder()
    sync_once(make_settings(db_url, TITLE_BODY), provider)
    assert len(provider.embedded) == 5
    assert {k: v[1] for k, v in stored(conn).items()} == texts(conn, "title", "body")
    conn.execute("UPDATE docs SET title = 'retitled' WHERE id = 1")  # the new triggers watch titles
    assert queue_depth(conn) == 1


def test_a_running_worker_on_a_superseded_definition_stops_writing(
    conn: psycopg.Connection, docs: str, db_url: str
) -> None:
    old = make_settings(db_url, BODY)
    sync_once(old, HashEmbedder())
    conn.execute("UPDATE docs SET body = body || '!'")
    db = Database.from_settings(old)
    [source] = schema.resolve_all(db, old)

    def adopt_meanwhile() -> None:
        new: Settings = make_settings(db_url, TITLE_BODY)
        schema.apply(Database.from_settings(new), new, HashEmbedder(), adopt=True)

    worker = Worker(db, HookedEmbedder(adopt_meanwhile), [source], WorkerOptions.from_settings(old))
    with pytest.raises(StoreChanged, match=r"now embeds columns title, body; key id, not this worker's columns body"):
        worker.run(once=True)
    assert conn.execute("SELECT count(*) FROM syncer.docs_queue WHERE lease_token IS NOT NULL").fetchone() == (0,)
    old_texts = texts(conn, "body")  # what the superseded worker embedded: none of it was written
    assert not any(stored(conn)[k][1] == h for k, h in old_texts.items())
    sync_once(make_settings(db_url, TITLE_BODY), HashEmbedder())
    assert {k: v[1] for k, v in stored(conn).items()} == texts(conn, "title", "body")


def test_a_new_key_cannot_be_adopted(conn: psycopg.Connection, docs: str, db_url: str) -> None:
    sync_once(make_settings(db_url, BODY), HashEmbedder())
    conn.execute("ALTER TABLE docs ADD COLUMN slug text")
    conn.execute("UPDATE docs SET slug = 'doc-' || id")
    conn.execute("ALTER TABLE docs ALTER COLUMN slug SET NOT NULL, ADD UNIQUE (slug)")
    code, output = run(db_url, BODY | {"key": ["slug"]}, "apply", "--adopt")
    assert code == 2
    assert "the configured key (slug) is not the applied one (id); a store is keyed once: `syncer drop docs`" in output
