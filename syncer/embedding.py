"""Embed a window of texts: each row gets a usable vector or its own error, and the provider's faults stay its own.

No database here. Classified once:
- the provider raises ``ProviderError`` / ``ProviderFatal``, or answers with the wrong number of
  vectors or dimensions or something that is not vectors: the provider's fault, for the whole
  batch (propagated; no row is charged);
- the provider raises anything else for a batch: some input is at fault; the batch is halved
  until the bad rows stand alone, and each is recorded with the provider's message;
- a vector with NaN or infinite values, or all zeros (no direction): that row's error.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from . import metrics
from .errors import ProviderError, ProviderFatal, row_error
from .providers import Bounds, Fits, Provider

log = logging.getLogger(__name__)

NAMED_ROWS = 10  # rows named in a warning; the rest are counted
MIN_NORM, MAX_NORM = 1e-6, 1e6  # a vector's length outside these breaks cosine similarity in float32


@dataclass
class Embedded:
    """Vectors by input position, and the error of each position that could not be embedded."""

    vectors: dict[int, np.ndarray] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)


def embed(
    provider: Provider,
    texts: list[str],
    labels: list[str] | None = None,
    on_too_long: Literal["truncate", "error"] = "truncate",
    name: str = "provider",
    counted: list[int | None] | None = None,
) -> Embedded:
    """Embed ``texts`` (``labels`` name their rows in messages; ``name`` the provider in metrics; ``counted``
    their tokens where the chunker counted them, else None).

    Texts over the provider's input limit are cut with a warning, or recorded as errors.
    """
    labels = labels or [str(i) for i in range(len(texts))]
    result = Embedded()
    fitted = _fit(provider, texts, labels, on_too_long, result, name, counted or [None] * len(texts))
    _embed_part(provider, fitted, [i for i in range(len(texts)) if i not in result.errors], result, name)
    return result


def _fit(
    provider: Provider,
    texts: list[str],
    labels: list[str],
    on_too_long: str,
    result: Embedded,
    name: str,
    counted: list[int | None],
) -> list[str]:
    if not isinstance(provider, Fits):
        return texts
    bound = provider.token_bound if isinstance(provider, Bounds) else None
    fitted, cut, sent = [], [], 0
    for position, (text, known) in enumerate(zip(texts, counted, strict=True)):
        if known is not None and known <= provider.max_input_tokens:
            fitted.append(text)  # counted by the chunker: it fits as it is
            sent += known
            continue
        if bound is not None and bound(text) <= provider.max_input_tokens:
            fitted.append(text)  # fits as it is: no tokenizer run
            continue
        fitted_text, tokens = provider.fit(text)
        sent += min(tokens, provider.max_input_tokens)
        if tokens > provider.max_input_tokens:
            if on_too_long == "error":
                limit = f"{provider.model_id} takes at most {provider.max_input_tokens}"
                result.errors[position] = f"input too long: {tokens} tokens; {limit}"
            else:
                cut.append(f"{labels[position]} {tokens} tokens")
        fitted.append(fitted_text)
    if bound is None:  # a provider with a bound counts the tokens it sends itself
        metrics.TOKENS.labels(name).inc(sent)
    if cut:  # one line per window, not one per row: long documents are common
        more = f" and {len(cut) - NAMED_ROWS} more" if len(cut) > NAMED_ROWS else ""
        log.warning(
            "rows cut to fit %s's %d-token input: %s%s",
            provider.model_id,
            provider.max_input_tokens,
            ", ".join(cut[:NAMED_ROWS]),
            more,
        )
    return fitted


def _embed_part(provider: Provider, texts: list[str], positions: list[int], result: Embedded, name: str) -> None:
    if not positions:
        return
    started = time.perf_counter()
    try:
        answer = provider.embed_documents([texts[i] for i in positions])
    except (ProviderError, ProviderFatal) as exc:
        _count(provider, name, "fatal" if isinstance(exc, ProviderFatal) else "error")
        raise
    except Exception as exc:  # the provider's own failure for this input: isolate it
        _count(provider, name, "rejected")
        if len(positions) == 1:
            result.errors[positions[0]] = row_error(exc)
            log.warning("row rejected by %s: %s", provider.model_id, result.errors[positions[0]])
            return
        middle = len(positions) // 2
        _embed_part(provider, texts, positions[:middle], result, name)
        _embed_part(provider, texts, positions[middle:], result, name)
        return
    metrics.EMBED_SECONDS.labels(name).observe(time.perf_counter() - started)
    try:
        vectors = checked(provider, answer, len(positions))
    except (ProviderError, ProviderFatal):
        _count(provider, name, "malformed")
        raise
    _count(provider, name, "ok")
    for position, vector, problem in zip(positions, vectors, unusable(vectors), strict=True):
        if problem:
            result.errors[position] = problem
        else:
            result.vectors[position] = vector


def _count(provider: Provider, name: str, outcome: str) -> None:
    """One provider call, unless the provider counts its own requests (the OpenAI one counts HTTP requests)."""
    if not getattr(provider, "counts_requests", False):
        metrics.PROVIDER_REQUESTS.labels(name, outcome).inc()


def checked(provider: Provider, answer: object, count: int) -> np.ndarray:
    """The provider's answer as a ``(count, dimensions)`` float32 array, or its fault."""
    try:
        vectors = np.asarray(answer, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise ProviderError(f"{provider.model_id} answered with something that is not vectors ({exc})") from exc
    if vectors.ndim != 2 or vectors.shape[0] != count:
        raise ProviderError(f"{provider.model_id} answered {count} texts with an array of shape {vectors.shape}")
    if vectors.shape[1] != provider.dimensions:
        raise ProviderFatal(
            f"{provider.model_id} made {vectors.shape[1]}-dimensional vectors, but it declares {provider.dimensions} "
            "(the store's size): check the model, SYNCER_DIMENSIONS, or the server behind SYNCER_OPENAI_BASE_URL"
        )
    return vectors


def unusable(vectors: np.ndarray) -> list[str | None]:
    """Per vector, why it cannot be stored and searched (None: it can)."""
    with np.errstate(all="ignore"):
        norms = np.linalg.norm(vectors.astype(np.float64), axis=1)
    return [_problem(norm) for norm in norms.tolist()]


def _problem(norm: float) -> str | None:
    if not np.isfinite(norm):
        return "the provider returned a vector with NaN or infinite values"
    if norm == 0:
        return "the provider returned an all-zero vector (no direction: cosine similarity is undefined)"
    if not MIN_NORM <= norm <= MAX_NORM:
        return f"the provider returned a vector of length {norm:.3g}: too short or too long to compare in float32"
    return None
