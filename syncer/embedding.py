"""Embed a window of texts, finding the rows a provider rejects without losing the rest (no database here)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from .providers import Provider, ProviderError

log = logging.getLogger(__name__)

MAX_ERROR = 1000  # characters of a provider's message kept per failed row


@dataclass
class Embedded:
    """Vectors by input position, and the error of each position that could not be embedded."""

    vectors: dict[int, np.ndarray] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)


def embed(provider: Provider, texts: list[str]) -> Embedded:
    """Embed ``texts``; if the provider rejects the batch, halve it until the bad rows stand alone.

    A ``ProviderError`` (the provider itself is failing) propagates: no row is charged for it.
    """
    result = Embedded()
    _embed_part(provider, texts, list(range(len(texts))), result)
    return result


def _embed_part(provider: Provider, texts: list[str], positions: list[int], result: Embedded) -> None:
    if not positions:
        return
    try:
        vectors = provider.embed_documents([texts[i] for i in positions])
        _check_shape(provider, vectors, len(positions))
    except ProviderError:
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
