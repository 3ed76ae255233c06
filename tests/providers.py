"""Deterministic tiny embedders for tests of queue logic (custom providers, loaded by import path).

Integration tests use the real packaged MiniLM; these exist to make failures and timing
reproducible: a rejected row, a slow batch, an edit that lands mid-embedding.
"""

from __future__ import annotations

import hashlib
import os
import time

import numpy as np

from syncer.providers import ProviderOptions

DIMENSIONS = 16


def hash_vector(text: str, dimensions: int = DIMENSIONS) -> np.ndarray:
    """A unit vector that depends only on the text."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    vector = np.random.default_rng(seed).standard_normal(dimensions).astype(np.float32)
    return vector / np.linalg.norm(vector)


class HashEmbedder:
    """Embeds by hashing; counts what it was asked to embed. SYNCER_TEST_EMBED_DELAY slows each batch."""

    model_id = "test/hash-16"
    dimensions = DIMENSIONS

    def __init__(self, options: ProviderOptions | None = None) -> None:
        self.calls: list[list[str]] = []
        self.delay = float(os.environ.get("SYNCER_TEST_EMBED_DELAY", "0"))

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        if self.delay:
            time.sleep(self.delay)
        vectors = [hash_vector(t, self.dimensions) for t in texts]
        return np.stack(vectors) if vectors else np.zeros((0, self.dimensions), np.float32)

    def embed_query(self, text: str) -> np.ndarray:
        return hash_vector(text, self.dimensions)

    @property
    def embedded(self) -> list[str]:
        return [t for call in self.calls for t in call]


class PoisonEmbedder(HashEmbedder):
    """Rejects any text containing POISON, as a provider rejects one bad input of a batch."""

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        if any("POISON" in t for t in texts):
            self.calls.append(list(texts))
            raise ValueError("input rejected: contains POISON")
        return super().embed_documents(texts)


class Hash32Embedder(HashEmbedder):
    """Another model: 32 dimensions."""

    model_id = "test/hash-32"
    dimensions = 32


class OtherHashEmbedder(HashEmbedder):
    """Another model with the same dimensions as HashEmbedder."""

    model_id = "test/other-16"
