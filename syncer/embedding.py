"""Embed a window of texts, finding the rows a provider rejects without losing the rest (no database here)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from .providers import Fits, Provider, ProviderError, ProviderFatal

log = logging.getLogger(__name__)

MAX_ERROR = 1000  # characters of a provider's message kept per failed row
NAMED_ROWS = 10  # rows named in a warning; the rest are counted


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
) -> Embedded:
    """Embed ``texts`` (``labels`` name their rows in messages).

    Texts over the provider's input limit are cut with a warning, or recorded as errors. If the
    provider rejects a batch, it is halved until the bad rows stand alone. ``ProviderError`` and
    ``ProviderFatal`` (the provider itself is failing) propagate: no row is charged for them.
    """
    labels = labels or [str(i) for i in range(len(texts))]
    result = Embedded()
    fitted = _fit(provider, texts, labels, on_too_long, result)
    _embed_part(provider, fitted, [i for i in range(len(texts)) if i not in result.errors], result)
    return result


def _fit(provider: Provider, texts: list[str], labels: list[str], on_too_long: str, result: Embedded) -> list[str]:
    if not isinstance(provider, Fits):
        return texts
    fitted, cut = [], []
    for position, text in enumerate(texts):
        fitted_text, tokens = provider.fit(text)
        if tokens > provider.max_input_tokens:
            if on_too_long == "error":
                limit = f"{provider.model_id} takes at most {provider.max_input_tokens}"
                result.errors[position] = f"input too long: {tokens} tokens; {limit}"
            else:
                cut.append(f"{labels[position]} {tokens} tokens")
        fitted.append(fitted_text)
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


def _embed_part(provider: Provider, texts: list[str], positions: list[int], result: Embedded) -> None:
    if not positions:
        return
    try:
        vectors = provider.embed_documents([texts[i] for i in positions])
        _check_shape(provider, vectors, len(positions))
    except (ProviderError, ProviderFatal):
        raise
    except Exception as exc:  # the provider's own failure for this input: isolate it
        if len(positions) == 1:
            message = f"{type(exc).__name__}: {exc}"[:MAX_ERROR]
            log.warning("row rejected by %s: %s", provider.model_id, message)
            result.errors[positions[0]] = message
            return
        middle = len(positions) // 2
        _embed_part(provider, texts, positions[:middle], result)
        _embed_part(provider, texts, positions[middle:], result)
        return
    for position, vector in zip(positions, vectors, strict=True):
        result.vectors[position] = vector


def _check_shape(provider: Provider, vectors: np.ndarray, count: int) -> None:
    if vectors.shape != (count, provider.dimensions):
        raise ValueError(
            f"provider {provider.model_id} returned shape {vectors.shape}, expected ({count}, {provider.dimensions})"
        )
