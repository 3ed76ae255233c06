"""Embedding providers: one small interface, one module per kind, loaded by name or import path.

A provider is constructed with its own options (``ProviderOptions`` or a subclass), never with
syncer's whole settings: the options a user's class receives are a public, stable interface.
"""

from __future__ import annotations

import hashlib
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from ..errors import ConfigError, ProviderError, ProviderFatal
from ..settings import Settings

__all__ = ["Bounds", "Fits", "Provider", "ProviderError", "ProviderFatal", "ProviderOptions", "load_provider"]


@runtime_checkable
class Provider(Protocol):
    """What syncer needs of an embedding model.

    ``embed_documents`` returns one row per text (float32, shape ``(len(texts), dimensions)``)
    and may raise for a batch; syncer then retries smaller parts to find the rows at fault.
    Raising ``ProviderError`` means "failing, retry later, charge no row"; ``ProviderFatal``
    stops the worker.
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
        """(the text as it will be embedded: as it is when it fits, else cut to the limit; its length in tokens
        before that)."""
        ...


@runtime_checkable
class Bounds(Protocol):
    """Optional, with ``Fits``: a cheap upper bound of ``fit(text)[1]`` that runs no tokenizer.

    A byte-level BPE (tiktoken) makes at most one token of each UTF-8 byte, so a text whose bytes are
    within a limit needs no tokenizer run to know it fits. A provider that says so also counts the
    tokens it sends itself (``syncer_tokens_total``): syncer then calls ``fit`` only for texts whose
    bound is over the limit.
    """

    def token_bound(self, text: str) -> int:
        """At least as many as ``fit(text)[1]`` (the document prompt included)."""
        ...


@dataclass(frozen=True)
class ProviderOptions:
    """What every provider is built with (``SYNCER_*`` settings of the same names). Fields are only ever added."""

    model: str | None = None
    dimensions: int | None = None
    device: str | None = None
    query_prompt: str | None = None
    document_prompt: str | None = None
    batch_size: int = 16  # texts per forward pass of a local model
    cache_dir: Path = Path(".syncer/models")  # where models exported or downloaded for syncer are kept


def prompt_suffix(prompt: str, model_default: str) -> str:
    """Part of a model id: a document prompt other than the model's own makes other vectors."""
    if prompt == model_default:
        return ""
    return f"+prompt:{hashlib.sha256(prompt.encode()).hexdigest()[:8]}"


def base_options(settings: Settings) -> ProviderOptions:
    return ProviderOptions(
        model=settings.model,
        dimensions=settings.dimensions,
        device=settings.device,
        query_prompt=settings.query_prompt,
        document_prompt=settings.document_prompt,
        batch_size=settings.encode_batch_size,
        cache_dir=settings.data_dir / "models",
    )


def load_provider(settings: Settings) -> Provider:
    """The provider SYNCER_PROVIDER names: a built-in one, or ``package.module:ClassName``."""
    if settings.provider == "sentence-transformers":
        from .sentence_transformers import SentenceTransformerProvider, local_options

        return SentenceTransformerProvider(local_options(settings))
    if settings.provider == "openai":
        from .openai_compatible import OpenAIProvider, openai_options

        return OpenAIProvider(openai_options(settings))
    if ":" in settings.provider:
        return _custom(settings.provider, base_options(settings))
    raise ConfigError(
        f"unknown provider {settings.provider!r}: use 'sentence-transformers', 'openai' or 'package.module:ClassName'"
    )


def _custom(name: str, options: ProviderOptions) -> Provider:
    module_name, _, class_name = name.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"provider {name!r} cannot be loaded: {exc}") from exc
    provider = cls(options)
    if not isinstance(provider, Provider):
        raise ConfigError(f"provider {name!r} lacks model_id, dimensions, embed_documents or embed_query")
    return provider
