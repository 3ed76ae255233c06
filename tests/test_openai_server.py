"""FakeOpenAI against the official client: the API shape, validation and every scripted misbehaviour."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import numpy as np
import openai
import pytest

from openai_server import FakeOpenAI, encoding

MODEL = "text-embedding-3-small"


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as running:
        yield running


def client(server: FakeOpenAI, **options: Any) -> openai.OpenAI:
    """The official client, without retries unless asked."""
    settings: dict[str, Any] = {"base_url": server.base_url, "api_key": "test", "max_retries": 0}
    return openai.OpenAI(**(settings | options))


def embed(server: FakeOpenAI, input: Any, **options: Any) -> openai.types.CreateEmbeddingResponse:
    with client(server) as c:
        return c.embeddings.create(input=input, model=options.pop("model", MODEL), **options)


def error_of(exc: openai.APIStatusError) -> dict[str, Any]:
    """The `error` object of an OpenAI error body."""
    return cast(dict[str, Any], exc.body)


def test_float_and_base64_give_the_served_vectors(server: FakeOpenAI) -> None:
    texts = ["hello world", "second text"]
    default = embed(server, texts)  # the client asks for base64 and decodes it itself
    floats = embed(server, texts, encoding_format="float")
    raw = embed(server, texts, encoding_format="base64")  # asked for explicitly: handed over undecoded
    for i, text in enumerate(texts):
        expected = FakeOpenAI.vector(text, 1536)
        assert np.array_equal(np.array(default.data[i].embedding, np.float32), expected)
        assert np.array_equal(np.array(floats.data[i].embedding, np.float32), expected)
        assert np.array_equal(np.frombuffer(base64.b64decode(cast(str, raw.data[i].embedding)), "<f4"), expected)
    tokens = sum(len(encoding().encode(t)) for t in texts)
    assert floats.usage.prompt_tokens == floats.usage.total_tokens == tokens
    assert floats.model == MODEL and [d.index for d in floats.data] == [0, 1]
    assert [r.encoding_format for r in server.requests] == ["base64", "float", "base64"]
    assert np.isclose(np.linalg.norm(FakeOpenAI.vector("x", 64)), 1.0)


@pytest.mark.parametrize(
    ("model", "dimensions", "length"),
    [
        (MODEL, None, 1536),
        ("text-embedding-3-large", None, 3072),
        ("text-embedding-ada-002", None, 1536),
        ("some-local-model", None, 64),
        (MODEL, 256, 256),
    ],
)
def test_dimensions(server: FakeOpenAI, model: str, dimensions: int | None, length: int) -> None:
    options = {"dimensions": dimensions} if dimensions else {}
    response = embed(server, "text", model=model, **options)
    assert np.array_equal(np.array(response.data[0].embedding, np.float32), FakeOpenAI.vector("text", length))
    assert server.requests[0].dimensions == dimensions and server.requests[0].model == model


def test_shorter_vectors_are_renormalized_prefixes() -> None:
    full = FakeOpenAI.vector("text", 1536)
    assert np.allclose(FakeOpenAI.vector("text", 256), full[:256] / np.linalg.norm(full[:256]), atol=1e-6)


def test_token_inputs_embed_their_text(server: FakeOpenAI) -> None:
    texts = ["hello world", "tokens too"]
    many = embed(server, [encoding().encode(t) for t in texts])
    one = embed(server, encoding().encode(texts[0]))
    assert np.array_equal(np.array(one.data[0].embedding, np.float32), FakeOpenAI.vector(texts[0], 1536))
    for i, text in enumerate(texts):
        assert np.array_equal(np.array(many.data[i].embedding, np.float32), FakeOpenAI.vector(text, 1536))
    assert server.requests[0].inputs == texts
    assert server.requests[0].tokens == many.usage.total_tokens == sum(len(encoding().encode(t)) for t in texts)


@pytest.mark.parametrize(
    "input",
    [
        pytest.param("", id="empty string"),
        pytest.param(["fine", ""], id="empty string in a list"),
        pytest.param(["x"] * 2049, id="2049 inputs"),
        pytest.param(" a" * 8193, id="8193 tokens"),
        pytest.param([], id="empty list"),
    ],
)
def test_invalid_inputs_are_rejected(server: FakeOpenAI, input: Any) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        embed(server, input, model="tiny")
    assert error_of(caught.value)["type"] == "invalid_request_error"
    assert error_of(caught.value)["param"] == "input"
    assert server.requests[0].status == 400


def test_the_limits_themselves_pass(server: FakeOpenAI) -> None:
    assert len(embed(server, ["x"] * 2048, model="tiny").data) == 2048
    assert embed(server, " a" * 8192, model="tiny").usage.total_tokens == 8192


def test_marked_inputs_are_rejected(server: FakeOpenAI) -> None:
    server.reject_inputs_containing("POISON")
    with pytest.raises(openai.BadRequestError) as caught:
        embed(server, ["fine", "has POISON in it"])
    assert "input[1]" in caught.value.message and "POISON" in caught.value.message
    assert len(embed(server, ["fine"]).data) == 1
    assert [r.status for r in server.requests] == [400, 200]
    assert server.requests[0].inputs == ["fine", "has POISON in it"]


def test_missing_bearer_token_is_401(server: FakeOpenAI) -> None:
    request = urllib.request.Request(
        f"{server.base_url}/embeddings",
        data=json.dumps({"input": "x", "model": MODEL}).encode(),
        headers={"content-type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=5)
    assert caught.value.code == 401
    assert json.load(caught.value)["error"]["code"] == "invalid_api_key"


def test_api_key_is_checked_when_set(server: FakeOpenAI) -> None:
    server.api_key = "right"
    with pytest.raises(openai.AuthenticationError) as caught:
        embed(server, "x")
    assert caught.value.code == "invalid_api_key"
    with client(server, api_key="right") as c:
        assert c.embeddings.create(input="x", model=MODEL).data
    assert server.requests[1].headers["authorization"] == "Bearer right"


def test_rate_limit_with_retry_after(server: FakeOpenAI) -> None:
    server.fail_next(429, headers={"retry-after": "1"})
    with pytest.raises(openai.RateLimitError) as caught:
        embed(server, "x")
    assert caught.value.response.headers["retry-after"] == "1"
    assert caught.value.code == "rate_limit_exceeded"
    assert MODEL in caught.value.message
    assert embed(server, "x").data


def test_quota_exhausted(server: FakeOpenAI) -> None:
    quota = {
        "message": "You exceeded your current quota...",
        "type": "insufficient_quota",
        "code": "insufficient_quota",
    }
    server.fail_next(429, body={"error": quota})
    with pytest.raises(openai.RateLimitError) as caught:
        embed(server, "x")
    assert caught.value.code == "insufficient_quota"
    assert caught.value.body == quota


def test_server_errors_then_recovery(server: FakeOpenAI) -> None:
    server.fail_next(500, times=2)
    for _ in range(2):
        with pytest.raises(openai.InternalServerError) as caught:
            embed(server, "x")
        assert error_of(caught.value)["type"] == "server_error"
    assert embed(server, "x").data
    assert [r.status for r in server.requests] == [500, 500, 200]


def test_scripted_401(server: FakeOpenAI) -> None:
    server.fail_next(401)
    with pytest.raises(openai.AuthenticationError) as caught:
        embed(server, "x")
    assert caught.value.code == "invalid_api_key"


def test_client_retries_honour_retry_after_ms(server: FakeOpenAI) -> None:
    server.fail_next(429, headers={"retry-after-ms": "100"})
    with client(server, max_retries=2) as c:
        assert c.embeddings.create(input="x", model=MODEL).data
    failed, retried = server.requests
    assert (failed.status, retried.status) == (429, 200)
    assert 0.08 <= retried.started - failed.finished < 0.35  # the client's own backoff starts at 0.375 s


def test_timeout_then_the_server_still_answers(server: FakeOpenAI) -> None:
    server.delay = 1.0
    with client(server, timeout=0.2) as c, pytest.raises(openai.APITimeoutError):
        c.embeddings.create(input="x", model=MODEL)
    server.delay = 0.0
    assert embed(server, "x").data


def test_concurrent_requests_overlap(server: FakeOpenAI) -> None:
    server.delay = 0.3
    with client(server) as c, ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: c.embeddings.create(input=f"text {i}", model=MODEL), range(4)))
    assert len(results) == 4 and server.max_in_flight > 1
    assert len(server.requests) == 4


def test_other_paths_are_404(server: FakeOpenAI) -> None:
    with (
        openai.OpenAI(base_url=server.base_url.removesuffix("/v1"), api_key="test", max_retries=0) as c,
        pytest.raises(openai.NotFoundError),
    ):
        c.embeddings.create(input="x", model=MODEL)


def test_listens_on_loopback_and_stops_on_exit() -> None:
    with FakeOpenAI() as server:
        assert server.base_url.startswith("http://127.0.0.1:")
        url = server.base_url
    with openai.OpenAI(base_url=url, api_key="test", max_retries=0) as c, pytest.raises(openai.APIConnectionError):
        c.embeddings.create(input="x", model=MODEL, timeout=2)
