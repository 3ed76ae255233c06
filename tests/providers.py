"""Deterministic tiny embedders for tests of queue logic (custom providers, loaded by import path).

Integration tests use the real packaged MiniLM; these exist to make failures and timing
reproducible: a rejected row, a slow batch, an edit that lands mid-embedding.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable

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


class BadVectorEmbedder(HashEmbedder):
    """Answers NaN for texts containing NAN, infinity for INF, all zeros for ZERO, and vectors too short (TINY)
    or too long (HUGE) to compare in float32; the rest as HashEmbedder."""

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        vectors = super().embed_documents(texts)
        for i, text in enumerate(texts):
            for marker, value in (("NAN", np.nan), ("INF", np.inf), ("ZERO", 0.0)):
                if marker in text:
                    vectors[i] = value
            for marker, scale in (("TINY", 1e-30), ("HUGE", 1e30)):
                if marker in text:
                    vectors[i] *= scale
        return vectors


class WrongSizeEmbedder(HashEmbedder):
    """Declares 16 dimensions and makes 17 (a server swapped to another model, say)."""

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return np.ones((len(texts), self.dimensions + 1), np.float32)


class ShortAnswerEmbedder(HashEmbedder):
    """Answers one vector too few: a malformed answer for the whole batch."""

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        return super().embed_documents(texts)[1:]


class HookedEmbedder(HashEmbedder):
    """Runs ``hook`` once, in the middle of the first embedding call (after the texts were read)."""

    def __init__(self, hook: Callable[[], None]) -> None:
        super().__init__()
        self.hook: Callable[[], None] | None = hook

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        vectors = super().embed_documents(texts)
        if self.hook is not None:
            hook, self.hook = self.hook, None
            hook()
        return vectors


class HangingEmbedder(HashEmbedder):
    """Never answers for a text containing HANG (a provider call stuck for good)."""

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        if any("HANG" in t for t in texts):
            threading.Event().wait()
        return super().embed_documents(texts)


class NulErrorEmbedder(HashEmbedder):
    """Rejects texts containing BAD with a message PostgreSQL's text cannot hold as it is (NUL, a lone surrogate)."""

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        if any("BAD" in t for t in texts):
            raise ValueError("bad\x00input \udc80")
        return super().embed_documents(texts)


class WordEmbedder(HashEmbedder):
    """Counts words as tokens (two more for the prompt and special tokens), at most 16: texts get chunked."""

    model_id = "test/words-16"
    max_input_tokens = 16

    def fit(self, text: str) -> tuple[str, int]:
        return text, len(text.split()) + 2
