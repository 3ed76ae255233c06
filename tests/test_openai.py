"""The OpenAI provider against a real local HTTP server that speaks the embeddings API and misbehaves on cue."""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Iterator

import numpy as np
import psycopg
import pytest
from pydantic import SecretStr

from syncer import embedding, metrics, schema
from syncer.database import Database
from syncer.providers import ProviderFatal, load_provider
from syncer.providers.openai_compatible import OpenAIOptions, OpenAIProvider, _vector
from syncer.settings import ChunkSize, Settings, SourceConfig
from syncer.worker import Worker, WorkerOptions

from helpers import make_settings, queue_depth, stored, sync_once, syncer_env, syncer_process
from openai_server import FakeOpenAI, encoding

DIMENSIONS = 64


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def texts(conn: psycopg.Connection) -> list[str]:
    """public.docs with 40 rows of varied length, plus rows that have nothing to embed."""
    conn.execute("CREATE TABLE docs (id int PRIMARY KEY, body text)")
    bodies = [f"document {i}: " + "lorem ipsum " * (i % 7) for i in range(1, 41)]
    conn.execute("INSERT INTO docs SELECT i, b FROM unnest(%s::text[]) WITH ORDINALITY AS t(b, i)", [bodies])
    conn.execute("INSERT INTO docs VALUES (41, ''), (42, '   '), (43, NULL)")
    return [b.strip() for b in bodies]


def openai_settings(db_url: str, server: FakeOpenAI, **overrides: object) -> Settings:
    values = {
        "provider": "openai",
        "openai_base_url": server.base_url,
        "openai_api_key": "sk-test-secret",
        "dimensions": DIMENSIONS,
        "request_timeout": 2.0,
        "max_retries": 3,
    }
    return make_settings(db_url, {"table": "docs", "columns": ["body"]}, **(values | overrides))


def openai_env(db_url: str, server: FakeOpenAI, **extra: str) -> dict[str, str]:
    """Environment for a `syncer` process that embeds docs.body through the fake server."""
    sources = json.dumps([{"table": "docs", "columns": ["body"]}])
    return syncer_env(db_url, sources, SYNCER_PROVIDER="openai", SYNCER_OPENAI_BASE_URL=server.base_url, **extra)


def sent(server: FakeOpenAI) -> list[str]:
    return [text for request in server.requests if request.status == 200 for text in request.inputs]


def test_syncs_a_table_and_stores_what_the_server_returned(
    conn: psycopg.Connection, texts: list[str], db_url: str, server: FakeOpenAI
) -> None:
    settings = openai_settings(db_url, server)
    sync_once(settings, load_provider(settings))

    vectors = stored(conn)
    assert sorted(vectors) == list(range(1, 41))
    for key, text in enumerate(texts, start=1):
        np.testing.assert_allclose(vectors[key][0], FakeOpenAI.vector(text, DIMENSIONS), rtol=1e-6)
        assert vectors[key][2] == f"text-embedding-3-small@{DIMENSIONS}"
    assert "" not in [t.strip() for t in sent(server)]  # empty texts are never sent
    assert all(r.dimensions == DIMENSIONS for r in server.requests)


def test_requests_respect_input_and_token_budgets_and_run_concurrently(
    conn: psycopg.Connection, texts: list[str], db_url: str, server: FakeOpenAI
) -> None:
    server.delay = 0.2
    settings = openai_settings(db_url, server, request_inputs=6, request_tokens=60, concurrency=4)
    provider = load_provider(settings)
    sync_once(settings, provider)

    answered = [r for r in server.requests if r.status == 200]
    assert all(len(r.inputs) <= 6 and r.tokens <= 60 for r in answered), [(len(r.inputs), r.tokens) for r in answered]
    assert sorted(sent(server)) == sorted(texts)
    assert 2 <= server.max_in_flight <= 4
    assert len(stored(conn)) == 40


def test_rate_limit_waits_as_long_as_the_server_asks(
    conn: psycopg.Connection, texts: list[str], db_url: str, server: FakeOpenAI
) -> None:
    settings = openai_settings(db_url, server, concurrency=1)
    provider = load_provider(settings)
    server.fail_next(429, headers={"retry-after-ms": "400"})
    server.fail_next(429, headers={"retry-after": "1"})
    sync_once(settings, provider)

    statuses = [r.status for r in server.requests]
    assert statuses[:3] == [429, 429, 200]
    first, second, third = server.requests[:3]
    assert second.started - first.finished >= 0.4
    assert third.started - second.finished >= 1.0
    assert len(stored(conn)) == 40


def test_server_errors_and_timeouts_are_retried(
    conn: psycopg.Connection, texts: list[str], db_url: str, server: FakeOpenAI
) -> None:
    settings = openai_settings(db_url, server, request_timeout=0.5, concurrency=1)
    provider = load_provider(settings)
    server.fail_next(500)
    server.fail_next(503)
    server.delay = 1.0  # the next answer comes too late: the client times out and tries again
    timer = _undelay_after(server, answered=1)
    sync_once(settings, provider)
    timer.join()

    assert [r.status for r in server.requests][:2] == [500, 503]
    assert len(stored(conn)) == 40
    assert conn.execute("SELECT count(*) FROM syncer.docs_queue").fetchone() == (0,)


def _undelay_after(server: FakeOpenAI, answered: int) -> threading.Thread:
    """Drop the server's delay once it has answered ``answered`` delayed requests (late, so timed out)."""

    def watch() -> None:
        start = len(server.requests)
        while len(server.requests) < start + answered + 2:
            time.sleep(0.02)
        server.delay = 0.0

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_an_outage_backs_off_without_charging_rows(
    conn: psycopg.Connection, texts: list[str], db_url: str, server: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    settings = openai_settings(db_url, server, max_retries=1, concurrency=1)
    provider = load_provider(settings)
    server.fail_next(500, times=2)
    db = Database.from_settings(settings)
    applied = [s for s, _ in schema.apply(db, settings, provider)]
    worker = Worker(db, provider, applied, WorkerOptions.from_settings(settings))
    with caplog.at_level(logging.WARNING):
        worker.run(once=True)  # the retry loop of `run` rides out the outage
    assert "gave up after 2 attempts" in caplog.text
    assert len(stored(conn)) == 40
    assert queue_depth(conn) == 0


def test_one_rejected_input_is_isolated_and_recorded(
    conn: psycopg.Connection, texts: list[str], db_url: str, server: FakeOpenAI
) -> None:
    conn.execute("UPDATE docs SET body = 'FORBIDDEN words' WHERE id = 7")
    server.reject_inputs_containing("FORBIDDEN")
    settings = openai_settings(db_url, server)
    sync_once(settings, load_provider(settings))

    assert sorted(stored(conn)) == [k for k in range(1, 41) if k != 7]
    attempts, error = conn.execute("SELECT attempts, last_error FROM syncer.docs_queue WHERE id = 7").fetchone()
    assert attempts == 1
    assert "HTTP 400" in error and "FORBIDDEN" in error


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (401, None, "HTTP 401"),
        (
            429,
            {
                "error": {
                    "message": "You exceeded your current quota",
                    "type": "insufficient_quota",
                    "code": "insufficient_quota",
                }
            },
            "quota exhausted",
        ),
    ],
)
def test_bad_key_or_exhausted_quota_stops_the_worker_and_charges_no_row(
    conn: psycopg.Connection,
    texts: list[str],
    db_url: str,
    server: FakeOpenAI,
    status: int,
    body: dict | None,
    message: str,
) -> None:
    env = openai_env(db_url, server, OPENAI_API_KEY="sk-test-secret", SYNCER_DIMENSIONS=str(DIMENSIONS))
    server.fail_next(status, times=100, body=body)
    output, _ = (worker := syncer_process(["run"], env)).communicate(timeout=60)
    assert worker.returncode == 2, output
    assert message in output.splitlines()[-1]
    assert "sk-test-secret" not in output
    if conn.execute("SELECT to_regclass('syncer.docs_queue')").fetchone()[0]:
        assert conn.execute("SELECT max(attempts) FROM syncer.docs_queue").fetchone()[0] in (0, None)


def test_over_long_input_is_cut_with_a_warning_or_recorded_without_chunking(
    conn: psycopg.Connection, texts: list[str], db_url: str, server: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    conn.execute("UPDATE docs SET body = repeat('word ', 9000) WHERE id = 3")
    settings = openai_settings(db_url, server).model_copy(
        update={"sources": [SourceConfig(table="docs", columns=("body",), chunking="none")]}
    )
    with caplog.at_level(logging.WARNING):
        sync_once(settings, load_provider(settings))
    assert "rows cut to fit text-embedding-3-small@64's 8191-token input: 3 9000 tokens" in caplog.text
    assert max(len(encoding().encode(t)) for t in sent(server)) == 8191
    assert 3 in stored(conn)

    conn.execute("UPDATE docs SET body = repeat('word ', 9001) WHERE id = 3")
    settings = settings.model_copy(update={"on_too_long": "error"})
    sync_once(settings, load_provider(settings))
    error = conn.execute("SELECT last_error FROM syncer.docs_queue WHERE id = 3").fetchone()[0]
    assert error.startswith("input too long: 9001 tokens")


def test_over_long_input_is_chunked_by_default(
    conn: psycopg.Connection, texts: list[str], db_url: str, server: FakeOpenAI
) -> None:
    conn.execute("UPDATE docs SET body = repeat('word ', 9000) WHERE id = 3")
    settings = openai_settings(db_url, server)
    sync_once(settings, load_provider(settings))
    chunks = conn.execute(
        "SELECT chunk, chunk_start, chunk_end, length(chunk_text) FROM docs_embeddings WHERE id = 3 ORDER BY chunk"
    ).fetchall()
    assert len(chunks) == 2 and chunks[0][1] == 0 and chunks[-1][2] == len("word " * 9000) - 1
    assert max(len(encoding().encode(t)) for t in sent(server)) <= 8191


def test_texts_that_fit_by_their_bytes_never_run_the_tokenizer(
    conn: psycopg.Connection, texts: list[str], db_url: str, server: FakeOpenAI
) -> None:
    settings = openai_settings(db_url, server)
    provider = load_provider(settings)
    assert isinstance(provider, OpenAIProvider)
    sync_once(settings, provider)
    assert len(stored(conn)) == 40
    assert provider._encoding is None  # every text is within 8,191 bytes: the tokenizer was never loaded

    long = "word " * 2000  # 10,000 bytes, 2,000 tokens: counted, then sent whole
    conn.execute("UPDATE docs SET body = %s WHERE id = 5", [long])
    sync_once(settings, provider)
    assert provider._encoding is not None
    assert conn.execute("SELECT count(*) FROM docs_embeddings WHERE id = 5").fetchone()[0] == 1
    assert long.strip() in [text.strip() for text in sent(server)]


def test_chunks_by_tokens_are_counted_in_tokens_not_bytes(
    conn: psycopg.Connection, texts: list[str], db_url: str, server: FakeOpenAI
) -> None:
    conn.execute("UPDATE docs SET body = repeat('word ', 300) WHERE id = 3")  # 1,500 bytes, 300 tokens
    conn.execute("UPDATE docs SET body = repeat('word ', 1000) WHERE id = 4")  # 1,000 tokens
    settings = openai_settings(db_url, server).model_copy(
        update={"sources": [SourceConfig(table="docs", columns=("body",), chunking=ChunkSize(max_tokens=512))]}
    )
    sync_once(settings, load_provider(settings))
    chunks = dict(conn.execute("SELECT id, count(*) FROM docs_embeddings WHERE id IN (3, 4) GROUP BY id").fetchall())
    assert chunks == {3: 1, 4: 2}
    assert max(len(encoding().encode(t)) for t in sent(server)) <= 512


def test_vectors_are_read_as_base64_or_as_lists_of_numbers() -> None:
    """syncer asks for base64; a compatible server that ignores that and sends numbers is read as well."""
    vector = np.array([0.25, -1.5, 3.0], dtype=np.float32)
    as_base64 = base64.b64encode(vector.astype("<f4").tobytes()).decode()
    np.testing.assert_array_equal(_vector(as_base64), vector)
    np.testing.assert_array_equal(_vector([0.25, -1.5, 3.0]), vector)
    with pytest.raises(TypeError):
        _vector({"values": [0.25]})


def test_vectors_of_another_size_stop_the_worker_and_charge_no_row(server: FakeOpenAI) -> None:
    provider = OpenAIProvider(OpenAIOptions(base_url=server.base_url, api_key=SecretStr("k"), dimensions=DIMENSIONS))
    server.fail_next(200, body={"object": "list", "data": [{"index": 0, "embedding": [0.5, 0.5]}]})
    with pytest.raises(ProviderFatal, match="made 2-dimensional vectors, but it declares 64"):
        embedding.embed(provider, ["a text"])


def test_the_tokens_metric_counts_what_the_server_reports(
    conn: psycopg.Connection, texts: list[str], db_url: str, server: FakeOpenAI
) -> None:
    settings = openai_settings(db_url, server)
    before = metrics.TOKENS.labels("openai")._value.get()
    sync_once(settings, load_provider(settings))
    took = sum(r.tokens for r in server.requests if r.status == 200)
    assert took > 0 and metrics.TOKENS.labels("openai")._value.get() - before == took


def test_dimensions_are_learned_from_the_endpoint_and_the_key_checked_at_start(server: FakeOpenAI) -> None:
    options = OpenAIOptions(model="nomic-embed-text", base_url=server.base_url, api_key=SecretStr("k"))
    provider = OpenAIProvider(options)
    assert provider.dimensions == 64  # the fake's size for models it does not know
    server.api_key = "right"
    with pytest.raises(ProviderFatal, match="HTTP 401"):
        OpenAIProvider(options)


def test_query_and_document_prompts(server: FakeOpenAI) -> None:
    options = OpenAIOptions(
        model="e5-small",
        base_url=server.base_url,
        api_key=SecretStr("k"),
        query_prompt="query: ",
        document_prompt="passage: ",
    )
    provider = OpenAIProvider(options)
    np.testing.assert_allclose(provider.embed_query("cats"), FakeOpenAI.vector("query: cats", 64), rtol=1e-6)
    np.testing.assert_allclose(provider.embed_documents(["cats"])[0], FakeOpenAI.vector("passage: cats", 64), rtol=1e-6)


def test_syncer_run_once_against_a_compatible_server_without_a_key(
    conn: psycopg.Connection, texts: list[str], db_url: str, server: FakeOpenAI
) -> None:
    """The issue's acceptance command, as a user runs it against e.g. a local vLLM or Ollama."""
    env = openai_env(db_url, server, SYNCER_MODEL="nomic-embed-text")
    env.pop("OPENAI_API_KEY", None)
    output, _ = (worker := syncer_process(["run", "--once"], env)).communicate(timeout=60)
    assert worker.returncode == 0, output
    vectors = stored(conn)
    assert len(vectors) == 40 and {v[2] for v in vectors.values()} == {"nomic-embed-text"}
    np.testing.assert_allclose(vectors[1][0], FakeOpenAI.vector(texts[0], 64), rtol=1e-6)
