"""Long texts split into chunks that fit the model, on paragraph, then sentence, then word boundaries.

Counted with the provider's own tokenizer, the document prompt and special tokens included, through
``semantic-text-splitter`` (chosen after measuring it against semchunk and langchain-text-splitters:
the only one with exact character offsets also under overlap, Unicode sentence boundaries, and no
Python dependencies). Each chunk keeps its character offsets in the row's text. No database here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .errors import ConfigError
from .providers import Bounds, Fits, Provider
from .settings import ChunkSize, SourceConfig


@dataclass(frozen=True)
class Chunk:
    start: int  # character offsets in the row's text: text[start:end]
    end: int
    text: str | None  # None: the chunk is the whole text
    tokens: int | None = None  # the whole text's tokens, when the chunker counted them to see that it fits


class Chunker:
    """Splits a row's text for one source and provider (``"none"``: never)."""

    def __init__(
        self,
        count: Callable[[str], int] | None,
        capacity: int | None,
        overlap: int = 0,
        bound: Callable[[str], int] | None = None,
    ) -> None:
        self.count = count
        self.capacity = capacity
        self.bound = bound  # a cheap upper bound of count: a text within it is never counted
        self._splitter = None
        if count is not None and capacity is not None:
            from semantic_text_splitter import TextSplitter

            self._splitter = TextSplitter.from_callback(count, capacity, overlap=overlap, trim=True)

    def split(self, text: str) -> list[Chunk]:
        """The text's chunks; one (the whole text, as it is) when it fits."""
        whole = [Chunk(0, len(text), None)]
        if self._splitter is None or self.count is None or self.capacity is None:
            return whole
        if self.bound is not None and self.bound(text) <= self.capacity:
            return whole
        tokens = self.count(text)
        if tokens <= self.capacity:
            return [Chunk(0, len(text), None, tokens)]
        chunks = [Chunk(start, start + len(piece), piece) for start, piece in self._splitter.chunk_indices(text)]
        return chunks or whole


def chunker(config: SourceConfig, provider: Provider) -> Chunker:
    """The chunker ``config.chunking`` asks for, counting with ``provider``'s tokenizer."""
    chunking = config.chunking
    if chunking == "none":
        return Chunker(None, None)
    if not isinstance(provider, Fits):
        if isinstance(chunking, ChunkSize):
            raise ConfigError(
                f"source {config.source_name!r}: chunking by tokens needs a provider that counts them "
                f"({provider.model_id} has no fit()); use chunking 'auto' or 'none'"
            )
        return Chunker(None, None)  # "auto" with no known input limit: nothing to split for
    fits: Fits = provider

    def count(text: str) -> int:
        return fits.fit(text)[1]

    bound = provider.token_bound if isinstance(provider, Bounds) else None
    if isinstance(chunking, ChunkSize):
        return Chunker(count, min(chunking.max_tokens, fits.max_input_tokens), chunking.overlap, bound)
    return Chunker(count, fits.max_input_tokens, bound=bound)
