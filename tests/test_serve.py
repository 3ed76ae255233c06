"""Search from any language: `syncer serve` (OpenAI's embeddings API, a search endpoint) and the Python API."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import numpy as np
import openai
import psycopg
import pytest

from syncer import Match, Searcher

from helpers import cosine, make_settings, sync_once, syncer_env, syncer_process

SOURCES = [{"table": "docs", "columns": ["title", "body"]}]
KEY = "serve-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def post(url: str, body: object, key: str | None = KEY) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
    request = urllib.request.Request(url, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture
def served(conn: psycopg.Connection, docs: str, db_url: str, minilm) -> Iterator[str]:
    """`syncer serve` over the synced docs, with the real model; yields its base URL."""
    sync_once(make_settings(db_url, *SOURCES), minilm)
    port = free_port()
    env = syncer_env(db_url, json.dumps(SOURCES), SYNCER_SERVE_API_KEY=KEY, SYNCER_SERVE_MAX_INPUTS="8")
    process = syncer_process(["serve", "--port", str(port)], env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, process.communicate()[0]
            try:
                urllib.request.urlopen(f"{base}/healthz", timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "syncer serve did not start"
                time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        process.communicate(timeout=30)


def test_an_openai_client_gets_the_query_embeddings_the_store_expects(
    served: str, conn: psycopg.Connection, minilm
) -> None:
    client = openai.OpenAI(base_url=f"{served}/v1", api_key=KEY)
    question = "how do I make tomato soup?"
    answer = client.embeddings.create(model="all-MiniLM-L6-v2", input=[question, "compress files"])
    assert answer.model == minilm.model_id and len(answer.data) == 2
    vector = np.asarray(answer.data[0].embedding, dtype=np.float32)
    assert cosine(vector, minilm.embed_query(question)) > 0.999
    floats = client.embeddings.create(model="x", input=question, encoding_format="float")
    assert cosine(np.asarray(floats.data[0].embedding), vector) > 0.999
    documents = client.embeddings.create(model="x", input=[question], extra_body={"input_type": "document"})
    assert cosine(np.asarray(documents.data[0].embedding), minilm.embed_documents([question])[0]) > 0.999

    in_sql = [r[0] for r in conn.execute("SELECT id FROM syncer.search_docs(%s, 3)", [vector])]
    status, found = post(f"{served}/v1/search/docs", {"query": question, "k": 3})
    assert status == 200 and [m["key"]["id"] for m in found["data"]] == in_sql
    output, _ = (cli := syncer_process(["search", "docs", question, "-k", "3"], _env(conn))).communicate(timeout=90)
    assert cli.returncode == 0, output
    lines = output.strip().splitlines()
    table = lines[next(i for i, line in enumerate(lines) if line.startswith("id ")) + 2 :]
    assert [int(line.split()[0]) for line in table] == in_sql


def _env(conn: psycopg.Connection) -> dict[str, str]:
    return syncer_env(conn.info.dsn, json.dumps(SOURCES))


def test_search_endpoint_returns_rows_with_their_passage(served: str) -> None:
    status, found = post(f"{served}/v1/search/docs", {"query": "bread dough", "k": 2, "filter": {"lang": "en"}})
    assert status == 200 and found["source"] == "docs" and len(found["data"]) == 2
    best = found["data"][0]
    assert best["key"] == {"id": 2} and best["row"]["title"] == "Bread" and best["row"]["lang"] == "en"
    assert best["text"] == "Bread\n\nKnead flour, water, salt and yeast; let the dough rise, then bake."
    assert 0 < best["score"] <= 1 and best["chunk"] == 0
    status, found = post(f"{served}/v1/search/docs", {"query": "gzip", "k": 1, "hybrid": True})
    assert status == 200 and found["data"][0]["key"] == {"id": 3}


MISTAKES = [  # (path, body, bearer token, status, the message says)
    ("/v1/search/nope", {"query": "x"}, KEY, 404, "unknown source 'nope' (known: docs)"),
    ("/v1/search/docs", {"query": "x", "filter": "lang=en"}, KEY, 400, "'filter' must be a JSON object"),
    ("/v1/search/docs", {"query": "x", "k": 0}, KEY, 400, "'k' must be a whole number from 1 to 100"),
    ("/v1/search/docs", {"k": 3}, KEY, 400, "'query' must be a non-empty string"),
    ("/v1/search/docs", {"query": "x"}, None, 401, "missing or wrong API key"),
    ("/v1/search/docs", {"query": "x"}, "wrong", 401, "missing or wrong API key"),
    ("/v1/embeddings", {"input": ["x"] * 9}, KEY, 413, "9 inputs: at most 8 per request"),
    ("/v1/embeddings", b"x" * 1_000_001, KEY, 413, "the request body is over 1000000 bytes"),
    ("/v1/embeddings", {"input": [[1, 2, 3]]}, KEY, 400, "token arrays are not taken"),
    ("/v1/embeddings", {"input": "x", "dimensions": 3}, KEY, 400, "makes 384-dimensional vectors"),
    ("/v1/embeddings", b"not json", KEY, 400, "the request body is not JSON"),
]


def test_mistakes_get_clear_4xx_errors(served: str) -> None:
    for path, body, key, status, message in MISTAKES:
        got, answer = post(f"{served}{path}", body, key)
        assert got == status and message in answer["error"]["message"], (path, body, answer)


def test_the_python_api_returns_typed_matches(conn: psycopg.Connection, docs: str, db_url: str, minilm) -> None:
    settings = make_settings(db_url, *SOURCES)
    sync_once(settings, minilm)
    with Searcher(settings, provider=minilm) as searcher:
        matches = searcher.search("docs", "how do I make tomato soup?", k=2)
        hybrid = searcher.search("docs", "gzip", k=1, hybrid=True)
    assert all(isinstance(m, Match) for m in matches)
    assert [m.key for m in matches] == [{"id": 1}, {"id": 2}]
    assert matches[0].row["title"] == "Tomato soup" and matches[0].text.startswith("Tomato soup\n\nSimmer")
    assert matches[0].score == matches[0].similarity and matches[0].score > matches[1].score
    assert hybrid[0].key == {"id": 3} and hybrid[0].similarity is not None
