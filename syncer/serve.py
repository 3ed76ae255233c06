"""`syncer serve`: query embeddings and search over HTTP, for applications in any language.

- ``POST /v1/embeddings`` speaks OpenAI's embeddings API: any OpenAI client pointed at it gets the
  configured model's *query* embeddings (its query prompt applied), exactly what the store expects;
  ``"input_type": "document"`` gives document embeddings instead.
- ``POST /v1/search/{source}`` with ``{"query", "k", "filter", "hybrid"}`` returns the rows as JSON.
- ``/healthz``, ``/readyz``, ``/metrics`` as the worker's.

An optional bearer token (``SYNCER_SERVE_API_KEY``) guards the API; request bodies and batches are
bounded; mistakes get OpenAI-style 4xx errors that say what is wrong.
"""

from __future__ import annotations

import base64
import hmac
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route

from . import metrics
from .api import Searcher
from .errors import ConfigError
from .health import Health
from .http import application
from .providers import Fits

MAX_K = 100  # rows one search may ask for


@dataclass(frozen=True)
class Limits:
    api_key: SecretStr | None
    max_inputs: int  # texts per embeddings request
    max_bytes: int  # request body


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def response(self) -> Response:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        body = {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}
        return _json(body, self.status)


def serve_application(searcher: Searcher, limits: Limits) -> Starlette:
    health = Health(max_step_seconds=float("inf"), provider=searcher.model_id)
    base = application(health, searcher.db, metrics.registry(None))

    async def embeddings(request: Request) -> Response:
        try:
            body = await _body(request, limits)
            return _json(await run_in_threadpool(_embeddings, searcher, body, limits))
        except ApiError as error:
            return error.response()

    async def search(request: Request) -> Response:
        try:
            body = await _body(request, limits)
            found = await run_in_threadpool(_search, searcher, request.path_params["source"], body)
            return _json(found)
        except ApiError as error:
            return error.response()

    api = [
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/v1/search/{source}", search, methods=["POST"]),
    ]
    return Starlette(routes=[*api, *[r for r in base.routes if isinstance(r, Route | Mount)]])


async def _body(request: Request, limits: Limits) -> dict[str, Any]:
    """The request's JSON object, once its bearer token checks out; bounded in size."""
    if limits.api_key is not None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        expected = limits.api_key.get_secret_value()
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected.encode()):
            raise ApiError(401, "missing or wrong API key: send Authorization: Bearer <SYNCER_SERVE_API_KEY>",
                           code="invalid_api_key")  # fmt: skip
    raw = bytearray()
    async for piece in request.stream():
        raw += piece
        if len(raw) > limits.max_bytes:
            raise ApiError(413, f"the request body is over {limits.max_bytes} bytes (SYNCER_SERVE_MAX_BYTES)")
    try:
        body = json.loads(raw)
    except ValueError:
        raise ApiError(400, "the request body is not JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body


def _embeddings(searcher: Searcher, body: dict[str, Any], limits: Limits) -> dict[str, Any]:
    inputs = body.get("input")
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, list) or not inputs or not all(isinstance(t, str) for t in inputs):
        raise ApiError(400, "'input' must be a string or a non-empty list of strings (token arrays are not taken)",
                       param="input")  # fmt: skip
    if len(inputs) > limits.max_inputs:
        raise ApiError(413, f"{len(inputs)} inputs: at most {limits.max_inputs} per request (SYNCER_SERVE_MAX_INPUTS)",
                       param="input")  # fmt: skip
    if any(not text.strip() for text in inputs):
        raise ApiError(400, "an input is empty", param="input")
    kind = body.get("input_type", "query")
    if kind not in ("query", "document"):
        raise ApiError(400, "'input_type' is 'query' (the default) or 'document'", param="input_type")
    fmt = body.get("encoding_format", "float")
    if fmt not in ("float", "base64"):
        raise ApiError(400, "'encoding_format' is 'float' or 'base64'", param="encoding_format")
    provider = searcher.provider
    dimensions = body.get("dimensions")
    if dimensions is not None and dimensions != provider.dimensions:
        raise ApiError(400, f"{provider.model_id} makes {provider.dimensions}-dimensional vectors", param="dimensions")
    if kind == "query":
        vectors = np.stack([searcher.embed_query(text) for text in inputs])
    else:
        vectors = np.asarray(provider.embed_documents(inputs), dtype=np.float32)
    tokens = sum(provider.fit(text)[1] for text in inputs) if isinstance(provider, Fits) else 0
    data = [{"object": "embedding", "index": i, "embedding": _encode(vector, fmt)} for i, vector in enumerate(vectors)]
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return {"object": "list", "data": data, "model": provider.model_id, "usage": usage}


def _encode(vector: np.ndarray, fmt: str) -> list[float] | str:
    if fmt == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode()
    return [float(x) for x in vector]


def _search(searcher: Searcher, source: str, body: dict[str, Any]) -> dict[str, Any]:
    query, k, filter, hybrid = body.get("query"), body.get("k", 10), body.get("filter"), body.get("hybrid", False)
    if not isinstance(query, str) or not query.strip():
        raise ApiError(400, "'query' must be a non-empty string", param="query")
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K:
        raise ApiError(400, f"'k' must be a whole number from 1 to {MAX_K}", param="k")
    if filter is not None and not isinstance(filter, dict):
        raise ApiError(400, "'filter' must be a JSON object the rows must contain, e.g. {\"lang\": \"en\"}",
                       param="filter")  # fmt: skip
    if not isinstance(hybrid, bool):
        raise ApiError(400, "'hybrid' must be true or false", param="hybrid")
    try:
        matches = searcher.search(source, query, k, filter, hybrid)
    except ConfigError as error:
        raise ApiError(404, str(error), code="source_not_found") from None
    return {"object": "list", "source": source, "model": searcher.model_id, "data": [m.as_json() for m in matches]}


def _json(body: dict[str, Any], status: int = 200) -> Response:
    """JSON of rows whose values may be dates, decimals or UUIDs."""
    return Response(json.dumps(body, default=str), status_code=status, media_type="application/json")
