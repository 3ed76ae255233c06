"""Least privilege, as the README deploys it: the owner applies, the worker syncs, the reader searches, the app writes.

Four real non-superuser roles on a fresh database; a superuser only creates them and the pgvector
extension (which is not a trusted extension).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import psycopg
import pytest

from helpers import as_role, login_role, syncer_env, syncer_process
from providers import hash_vector

SOURCES = json.dumps([{"table": "docs", "columns": ["title", "body"]}])
HASH = "tests.providers:HashEmbedder"


@dataclass(frozen=True)
class Roles:
    url: str  # the superuser's, for setting up and inspecting
    owner: str
    worker: str
    reader: str
    app: str

    def cli(self, role: str, *args: str, **env: str) -> tuple[int, str]:
        environment = syncer_env(as_role(self.url, role), SOURCES, SYNCER_PROVIDER=HASH, **env)
        output, _ = (process := syncer_process(list(args), environment)).communicate(timeout=90)
        return process.returncode, output

    def ok(self, role: str, *args: str, **env: str) -> str:
        code, output = self.cli(role, *args, **env)
        assert code == 0, output
        return output


@pytest.fixture
def roles(empty_db_url: str) -> Iterator[Roles]:
    with psycopg.connect(empty_db_url, autocommit=True) as admin:
        admin.execute("CREATE EXTENSION vector")
        dbname = admin.info.dbname
        with (
            login_role(
                admin, f'GRANT CREATE ON DATABASE "{dbname}" TO {{role}}', "GRANT CREATE ON SCHEMA public TO {role}"
            ) as owner,
            login_role(admin) as worker,
            login_role(admin) as reader,
            login_role(admin) as app,
        ):
            with psycopg.connect(as_role(empty_db_url, owner), autocommit=True) as conn:
                conn.execute("CREATE TABLE docs (id bigserial PRIMARY KEY, title text, body text, secret text)")
                conn.execute(
                    "INSERT INTO docs (title, body, secret) VALUES ('Soup', 'Simmer tomatoes.', 's1'), "
                    "('Bread', 'Knead the dough.', 's2'), ('Gzip', 'Compress files.', 's3')"
                )
                conn.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON docs TO {app}")
                conn.execute(f"GRANT USAGE ON SEQUENCE docs_id_seq TO {app}")
            yield Roles(empty_db_url, owner, worker, reader, app)
            with psycopg.connect(as_role(empty_db_url, owner), autocommit=True) as conn:
                conn.execute("DROP SCHEMA syncer CASCADE")
                conn.execute("DROP TABLE IF EXISTS docs, docs_embeddings CASCADE")


def test_owner_applies_worker_syncs_reader_searches_app_writes(roles: Roles) -> None:
    roles.ok(roles.owner, "apply", SYNCER_INDEX_AFTER_ROWS="1")  # index deferred: the worker builds it
    worker_grants = roles.ok(roles.owner, "grant", "worker", roles.worker)
    assert f'GRANT SELECT ("id", "title", "body") ON "public"."docs" TO "{roles.worker}";' in worker_grants
    assert "secret" not in worker_grants
    reader_grants = roles.ok(roles.owner, "grant", "reader", roles.reader)
    assert (
        f'GRANT SELECT ("id", chunk, chunk_start, chunk_end, chunk_text, embedding, fts) ON "public"."docs_embeddings" '
        f'TO "{roles.reader}";'
    ) in reader_grants

    roles.ok(roles.worker, "run", "--once", SYNCER_APPLY="never", SYNCER_INDEX_MIN_ROWS="0")
    with psycopg.connect(as_role(roles.url, roles.app), autocommit=True) as app:
        app.execute("INSERT INTO docs (title, body) VALUES ('Pasta', 'Boil water.')")
        app.execute("UPDATE docs SET body = 'Simmer ripe tomatoes.' WHERE id = 1")
        app.execute("DELETE FROM docs WHERE id = 2")
    roles.ok(roles.worker, "run", "--once", SYNCER_APPLY="auto")  # all applied already: auto changes nothing

    with psycopg.connect(roles.url) as admin:
        assert admin.execute("SELECT id FROM docs_embeddings ORDER BY id").fetchall() == [(1,), (3,), (4,)]
        index_owner = admin.execute(
            "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = 'public.syncer_docs_hnsw'::regclass"
        ).fetchone()
        assert index_owner == (roles.owner,)  # built by the worker, through the owner's function
    with psycopg.connect(as_role(roles.url, roles.reader)) as reader:
        query = hash_vector("Gzip\n\nCompress files.", 16).astype(np.float32).tolist()
        found = reader.execute("SELECT id, title FROM syncer.search_docs(%s::vector, 2)", [str(query)]).fetchall()
        assert found[0] == (3, "Gzip")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            reader.execute("SELECT content_hash FROM docs_embeddings")


def test_the_worker_can_do_nothing_else(roles: Roles) -> None:
    roles.ok(roles.owner, "apply")
    roles.ok(roles.owner, "grant", "worker", roles.worker)
    with psycopg.connect(as_role(roles.url, roles.worker), autocommit=True) as worker:
        for statement in (
            "CREATE TABLE public.mine (id int)",
            "CREATE TABLE syncer.mine (id int)",
            "SELECT secret FROM docs",
            "UPDATE docs SET body = 'x'",
            "DROP TRIGGER syncer_docs_inserts ON docs",
            "UPDATE syncer.sources SET model = 'x'",
            "ALTER TABLE docs_embeddings ADD COLUMN x int",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                worker.execute(statement)


def test_a_worker_that_may_not_apply_names_syncer_apply(roles: Roles) -> None:
    code, output = roles.cli(roles.worker, "run", "--once", SYNCER_APPLY="never")
    assert code == 2 and "syncer's schema is at nothing" in output and "the owner must run `syncer apply`" in output
    roles.ok(roles.owner, "apply")
    roles.ok(roles.owner, "grant", "worker", roles.worker)
    with psycopg.connect(as_role(roles.url, roles.owner), autocommit=True) as owner:
        owner.execute("DROP TRIGGER syncer_docs_updates ON docs")  # a DBA's mistake
    code, output = roles.cli(roles.worker, "run", "--once", SYNCER_APPLY="never")
    assert code == 2
    assert output.strip().splitlines()[-1] == (
        "syncer: source 'docs': the installed objects differ from the configuration: the owner must run "
        "`syncer apply` (SYNCER_APPLY=never)"
    )
    roles.ok(roles.owner, "apply")
    roles.ok(roles.worker, "run", "--once", SYNCER_APPLY="never")


def test_after_an_upgrade_the_worker_still_builds_the_index(roles: Roles) -> None:
    roles.ok(roles.owner, "apply", SYNCER_INDEX_AFTER_ROWS="1")  # index deferred: the worker builds it
    roles.ok(roles.owner, "grant", "worker", roles.worker)
    with psycopg.connect(as_role(roles.url, roles.owner), autocommit=True) as owner:  # as 0.x left it
        owner.execute("DROP FUNCTION syncer.docs_index_v2")
        owner.execute(
            "CREATE FUNCTION syncer.docs_index_v1(bigint, integer) RETURNS boolean LANGUAGE sql AS 'SELECT true'"
        )
        owner.execute("REVOKE ALL ON FUNCTION syncer.docs_index_v1 FROM PUBLIC")
        owner.execute(f"GRANT EXECUTE ON FUNCTION syncer.docs_index_v1 TO {roles.worker}")
        owner.execute("UPDATE syncer.sources SET objects = 'rendered by 0.x'")
    roles.ok(roles.owner, "apply")  # the upgrade; `syncer grant worker` is not run again
    roles.ok(roles.worker, "run", "--once", SYNCER_APPLY="never", SYNCER_INDEX_MIN_ROWS="0")
    with psycopg.connect(roles.url) as admin:
        functions = "SELECT array_agg(proname::text) FROM pg_proc WHERE proname LIKE 'docs_index_v_'"
        assert admin.execute(functions).fetchone() == (["docs_index_v2"],)
        assert admin.execute("SELECT to_regclass('public.syncer_docs_hnsw')::text").fetchone() == ("syncer_docs_hnsw",)


def test_grant_print_changes_nothing(roles: Roles) -> None:
    roles.ok(roles.owner, "apply")
    printed = roles.ok(roles.owner, "grant", "worker", roles.worker, "--print")
    assert printed.count("GRANT") >= 6
    code, output = roles.cli(roles.worker, "run", "--once", SYNCER_APPLY="never")
    assert code == 2 and "permission denied" in output
