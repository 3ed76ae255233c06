"""Embedding providers: one small interface, one module per kind, loaded by name or import path."""

from __future__ import annotations

import importlib
from typing import Protocol, runtime_checkable

import numpy as np

from ..settings import ConfigError, Settings


class ProviderError(Exception):
    """The provider failed for the whole batch (down, overloaded, misconfigured): retry later."""


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


def load_provider(settings: Settings) -> Provider:
    """The provider SYNCER_PROVIDER names: a built-in one, or ``package.module:ClassName``."""
    if settings.provider == "sentence-transformers":
        from .sentence_transformers import SentenceTransformerProvider

        return SentenceTransformerProvider(settings)
    if ":" in settings.provider:
        return _custom(settings)
    raise ConfigError(
        f"unknown provider {settings.provider!r}: use 'sentence-transformers' or 'package.module:ClassName'"
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
