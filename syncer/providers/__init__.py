"""Embedding providers: one small interface, one module per kind, loaded by name or import path."""

from __future__ import annotations

import importlib
from typing import Protocol, runtime_checkable

import numpy as np

from ..settings import ConfigError, Settings


class ProviderError(Exception):
    """The provider failed for the whole batch (down, overloaded): no row is charged; retry later."""


class ProviderFatal(Exception):
    """The provider refuses all work until a person acts (bad key, no quota): stop, charge no row."""


@runtime_checkable
class Provider(Protocol):
    """What syncer needs of an embedding model.

    ``embed_documents`` returns one row per text (float32, shape ``(len(texts), dimensions)``)
    and may raise for a batch; syncer then retries smaller parts to find the rows at fault.
    """

    model_id: str
    dimensions: int

    def embed_documents(self, texts: list[str]) -> np.ndarray: ...

    def embed_query(self, text: str) -> np.ndarray: ...


@runtime_checkable
class Fits(Protocol):
    """Optional: a provider with an input limit tells how long a text is and what it would send."""

    max_input_tokens: int

    def fit(self, text: str) -> tuple[str, int]:
        """(the text as it will be embedded, cut to the limit if need be; its length in tokens before that)."""
        ...


def load_provider(settings: Settings) -> Provider:
    """The provider SYNCER_PROVIDER names: a built-in one, or ``package.module:ClassName``."""
    if settings.provider == "sentence-transformers":
        from .sentence_transformers import SentenceTransformerProvider

        return SentenceTransformerProvider(settings)
    if settings.provider == "openai":
        from .openai_compatible import OpenAIProvider

        return OpenAIProvider(settings)
    if ":" in settings.provider:
        return _custom(settings)
    raise ConfigError(
        f"unknown provider {settings.provider!r}: use 'sentence-transformers', 'openai' or 'package.module:ClassName'"
    )


def _custom(settings: Settings) -> Provider:
    module_name, _, class_name = settings.provider.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"provider {settings.provider!r} cannot be loaded: {exc}") from exc
    provider = cls(settings)
    if not isinstance(provider, Provider):
        raise ConfigError(f"provider {settings.provider!r} lacks model_id, dimensions, embed_documents or embed_query")
    return provider
