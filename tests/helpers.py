"""Shared test helpers: settings for a test database, one-shot syncs, and store inspection."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from syncer import fragments, queue, schema
from syncer.database import Database
from syncer.providers import Provider
from syncer.queries import query
from syncer.settings import Settings, SourceConfig
from syncer.sources import Source
from syncer.worker import Worker, WorkerOptions

ROOT = Path(__file__).resolve().parent.parent


def make_settings(db_url: str, *sources: dict[str, Any], **overrides: Any) -> Settings:
    """Settings for tests: fast polling, short backoff; nothing read from the environment."""
    default = SourceConfig(table="public.docs", columns=("title", "body"))
    values: dict[str, Any] = {
        "database_url": db_url,
        "sources": [SourceConfig(**s) for s in sources] or [default],
        "poll_interval": 0.2,
        "retry_base_seconds": 0.2,
        "retry_max_seconds": 1.0,
    }
    return Settings(**(values | overrides))


def sync_once(settings: Settings, provider: Provider) -> Worker:
    """`syncer run --once` in process: apply, then drain the queue."""
    db = Database.from_settings(settings)
    applied = schema.apply(db, settings, provider)
    worker = Worker(db, provider, [s for s, _ in applied], WorkerOptions.from_settings(settings))
    worker.run(once=True)
    return worker


def stored(conn: psycopg.Connection, store: str = "public.docs_embeddings") -> dict[Any, tuple[np.ndarray, bytes, str]]:
    """key -> (vector, content hash, model) of every stored vector."""
    rows = conn.execute(f"SELECT id, embedding, content_hash, model FROM {store}").fetchall()
    return {r[0]: (r[1].to_numpy(), bytes(r[2]), r[3]) for r in rows}


def sha256(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def expand(conn: psycopg.Connection, source: str = "docs") -> None:
    """Move the source's logged changes into its queue, as a worker's claim does first."""
    keys = [
        row[0]
        for row in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped "
            "AND attname NOT IN ('changed', 'seq', 'logged_at') ORDER BY attnum",
            [f"syncer.{source}_log"],
        )
    ]
    if not keys:
        return  # not applied yet
    config = SourceConfig(table=f"public.{source}", name=source, columns=(keys[0],))
    resolved = Source(config, "public", source, tuple(keys), (), "public", f"{source}_embeddings", f"{source}_queue")
    with conn.transaction():
        conn.execute(query("queue", "expand", **fragments.parts(resolved)), {"limit": 1_000_000})


def queue_depth(conn: psycopg.Connection, source: str = "docs") -> int:
    """Rows in the source's queue once its logged changes are moved in."""
    expand(conn, source)
    return conn.execute(f"SELECT count(*) FROM syncer.{source}_queue").fetchone()[0]


def syncer_env(db_url: str, sources: str, **extra: str) -> dict[str, str]:
    """Environment for a `syncer` subprocess: only SYNCER_* settings the test chose."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCER_")}
    env |= {
        "SYNCER_DATABASE_URL": db_url,
        "SYNCER_SOURCES": sources,
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
    }
    return env | extra


def syncer_process(args: list[str], env: dict[str, str], **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "syncer", *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


ROLE_PASSWORD = "syncer-test"


@contextmanager
def login_role(conn: psycopg.Connection, *grants: str, options: str = "") -> Iterator[str]:
    """A throwaway login role, granted ``grants`` (SQL with ``{role}``); dropped afterwards."""
    name = f"role_{uuid.uuid4().hex[:10]}"
    role = sql.Identifier(name)
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} " + options).format(role, sql.Literal(ROLE_PASSWORD)))
    try:
        for grant in grants:
            conn.execute(sql.SQL(grant).format(role=role))
        yield name
    finally:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(role))
        conn.execute(sql.SQL("DROP ROLE {}").format(role))


def as_role(url: str, role: str) -> str:
    """``url`` logging in as ``role``."""
    return make_conninfo(**(conninfo_to_dict(url) | {"user": role, "password": ROLE_PASSWORD}))


def whole(text: str | None, vector: np.ndarray) -> list[queue.Piece]:
    """A settle's vectors for a row embedded whole: one chunk, the whole text."""
    return [queue.Piece(0, 0, len(text or ""), None, vector)]
