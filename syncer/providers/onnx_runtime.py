"""A sentence-transformers model exported once to ONNX, then run with onnxruntime and `tokenizers` alone.

The export (torch's dynamo exporter, from the model loaded with eager attention; pooling and any
Dense/Normalize modules inside the graph) and the int8 quantization are cached in one directory per model::

    model.onnx  model-int8.onnx  tokenizer.json  meta.json

``meta.json`` is written last: its presence, with the fingerprint of the source model's files, is what
marks the export complete. Each file appears by an atomic rename, and a lock file keeps workers that
start together from exporting twice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..errors import ConfigError

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the cache layout or the exported graph changes: old caches are then re-exported
MODEL_FILE = "model.onnx"
INT8_FILE = "model-int8.onnx"
TOKENIZER_FILE = "tokenizer.json"
META_FILE = "meta.json"
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
EXTERNAL_DATA_BYTES = 1_800_000_000  # a protobuf file holds at most 2 GiB: larger weights go beside it
MIN_AGREEMENT = 0.999  # cosine of the exported graph against torch on CHECK_TEXTS; we measure ~1.0
CHECK_TEXTS = (
    "syncer",
    "Return the number of items in a container.",
    "Ünïcode, MiXeD case and punctuation?! 42 × 7 = 294",
    "long " * 600,  # beyond every model's input limit: truncation must agree too
)
CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"
NOISY_LOGGERS = ("torch.onnx", "onnxscript", "onnx_ir")


class Reference(Protocol):
    """What the export needs of the torch model: the loaded SentenceTransformer and what it tells."""

    model: Any
    dimensions: int
    max_tokens: int
    prompts: dict[str, str]

    def encode(self, texts: list[str], prompt: str, batch_size: int) -> np.ndarray: ...


@dataclasses.dataclass(frozen=True)
class Meta:
    """What running the export needs besides the graph and the tokenizer."""

    fingerprint: str | None
    dimensions: int
    max_tokens: int
    prompts: dict[str, str]
    pad_id: int
    pad_token: str
    padding_side: str
    format: int = FORMAT


def require(*modules: str, extra: str) -> None:
    """Import ``modules``, or raise ConfigError naming the pip extra that installs them."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(f"{module} is not installed ({exc}): pip install 'pgsyncer[{extra}]'") from None


class OnnxModel:
    """An exported model: tokenizes with `tokenizers`, runs with onnxruntime; no torch needed."""

    def __init__(self, directory: Path, file: str, device: str | None) -> None:
        import onnxruntime

        meta = read_meta(directory)
        if meta is None:
            raise ConfigError(f"{directory} holds no complete ONNX export")
        self.dimensions, self.max_tokens, self.prompts = meta.dimensions, meta.max_tokens, meta.prompts
        self._counter = _tokenizer(directory / TOKENIZER_FILE)
        self._tokenizer = _tokenizer(directory / TOKENIZER_FILE, meta)
        self.device, providers = execution_providers(device, onnxruntime.get_available_providers())
        self._session = onnxruntime.InferenceSession(str(directory / file), providers=providers)
        self._inputs = [i.name for i in self._session.get_inputs()]

    def count_tokens(self, text: str) -> int:
        return len(self._counter.encode(text).ids)

    def encode(self, texts: list[str], prompt: str, batch_size: int) -> np.ndarray:
        """Normalized vectors; like sentence-transformers, longest texts first so batches pad little."""
        vectors = np.empty((len(texts), self.dimensions), dtype=np.float32)
        order = np.argsort([-len(text) for text in texts], kind="stable")
        for start in range(0, len(texts), batch_size):
            rows = order[start : start + batch_size]
            vectors[rows] = self._forward([prompt + texts[i] for i in rows])
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(min=1e-12)

    def _forward(self, texts: list[str]) -> np.ndarray:
        encodings = self._tokenizer.encode_batch(texts)
        features = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
        return self._session.run(None, {name: features[name] for name in self._inputs})[0]


def _tokenizer(path: Path, meta: Meta | None = None) -> Any:
    """The saved tokenizer: with ``meta``, truncating and padding as the model's does; else for counting."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    if meta is not None:
        tokenizer.enable_truncation(meta.max_tokens)
        tokenizer.enable_padding(direction=meta.padding_side, pad_id=meta.pad_id, pad_token=meta.pad_token)
    return tokenizer


def execution_providers(device: str | None, available: list[str]) -> tuple[str, list[Any]]:
    """(the device, onnxruntime's providers for it): cuda when onnxruntime has it, else cpu."""
    device = device or ("cuda" if CUDA in available else "cpu")
    if device.startswith("cuda"):
        if CUDA not in available:
            raise ConfigError(f"device {device!r}: this onnxruntime has no CUDA: pip install onnxruntime-gpu")
        return device, [(CUDA, {"device_id": int(device.partition(":")[2] or 0)}), CPU]
    if device != "cpu":
        raise ConfigError(f"device {device!r}: the onnx backends run on cpu or cuda")
    return device, [CPU]


def ensure_exported(directory: Path, source: str, int8: bool, load: Callable[[], Reference]) -> None:
    """Export the model at ``source`` into ``directory`` unless an export of these very files is there."""
    directory.mkdir(parents=True, exist_ok=True)
    with _locked(directory / ".lock"):
        meta, fingerprint = read_meta(directory), source_fingerprint(source)
        # Without the source files at hand (an image shipped with the cache only), trust the cache.
        if meta is None or (fingerprint is not None and meta.fingerprint != fingerprint):
            _export(directory, source, load())
        if int8 and not (directory / INT8_FILE).exists():
            _quantize(directory)


def read_meta(directory: Path) -> Meta | None:
    try:
        meta = Meta(**json.loads((directory / META_FILE).read_text()))
    except (OSError, ValueError, TypeError):  # none yet, or from another syncer version
        return None
    return meta if meta.format == FORMAT else None


def source_fingerprint(source: str) -> str | None:
    """A digest of the names, sizes and times of the model's files; None if they are not on disk."""
    folder = _source_dir(source)
    if folder is None:
        return None
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        stat = file.stat()
        digest.update(f"{file.relative_to(folder)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _source_dir(source: str) -> Path | None:
    if Path(source).is_dir():
        return Path(source)
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(source, "config.json")
    except (ImportError, ValueError):  # no hub client, or not a hub id
        return None
    return Path(cached).parent if isinstance(cached, str) else None


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # Windows: without the lock, workers starting together each export; renames keep it safe
        yield
        return
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
        yield


def _export(directory: Path, source: str, reference: Reference) -> None:
    require("onnx", "onnxscript", extra="onnx")
    _check_exportable(reference.model, source)
    log.info("exporting %s to ONNX in %s (once per model)", source, directory)
    with tempfile.TemporaryDirectory(dir=directory, prefix=".export-") as tmp:
        staging = Path(tmp)
        (staging / TOKENIZER_FILE).write_text(reference.model.tokenizer.backend_tokenizer.to_str())
        _export_graph(reference.model, staging / MODEL_FILE, source)
        (staging / META_FILE).write_text(json.dumps(dataclasses.asdict(_meta(reference, source))))
        _check_agreement(staging, reference, source)
        (directory / INT8_FILE).unlink(missing_ok=True)  # quantized from the old export
        _publish(staging, directory)
    log.info("exported %s to %s", source, directory / MODEL_FILE)


def _check_exportable(model: Any, source: str) -> None:
    if not hasattr(getattr(model, "tokenizer", None), "backend_tokenizer"):
        raise ConfigError(f"model {source!r} has no fast (tokenizers) tokenizer: use SYNCER_ST_BACKEND=torch")
    if any(getattr(module, "include_prompt", True) is False for module in model):
        raise ConfigError(f"model {source!r} pools without its prompt: use SYNCER_ST_BACKEND=torch")


def _meta(reference: Reference, source: str) -> Meta:
    tokenizer = reference.model.tokenizer
    return Meta(
        fingerprint=source_fingerprint(source),  # after loading: a hub model is only now in the cache
        dimensions=reference.dimensions,
        max_tokens=reference.max_tokens,
        prompts=reference.prompts,
        pad_id=int(tokenizer.pad_token_id or 0),
        pad_token=str(tokenizer.pad_token or ""),
        padding_side=str(getattr(tokenizer, "padding_side", "right")),
    )


def _export_graph(model: Any, path: Path, source: str) -> None:
    try:
        _run_exporter(model, path)
    except Exception as exc:  # torch.export cannot capture every architecture: say which model, keep the cause
        detail = (str(exc).strip().splitlines() or [""])[0][:300]
        message = f"model {source!r} cannot be exported to ONNX ({type(exc).__name__}: {detail})"
        raise ConfigError(f"{message}: use SYNCER_ST_BACKEND=torch") from exc


def _run_exporter(model: Any, path: Path) -> None:
    import torch

    inputs = [name for name in INPUTS if name in model.tokenizer.model_input_names]
    sample = model.tokenizer(["syncer", "a second, longer sample text"], padding=True, return_tensors="pt")
    dynamic = torch.export.Dim.DYNAMIC
    large = sum(p.numel() * p.element_size() for p in model.parameters()) > EXTERNAL_DATA_BYTES
    with torch.no_grad(), _quiet():
        torch.onnx.export(
            _graph(model, inputs).eval(),
            tuple(sample[name] for name in inputs),
            str(path),
            dynamo=True,
            external_data=large,
            input_names=inputs,
            output_names=["sentence_embedding"],
            dynamic_shapes={"tensors": tuple({0: dynamic, 1: dynamic} for _ in inputs)},
            verbose=False,
        )


def _graph(model: Any, inputs: list[str]) -> Any:
    """The whole SentenceTransformer as a module of plain tensors (a class made here: torch loads lazily)."""
    import torch

    class Graph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            return self.model(dict(zip(inputs, tensors, strict=True)))["sentence_embedding"]

    return Graph()


@contextmanager
def _quiet() -> Iterator[None]:
    """Hide the tools' chatter (tracing warnings, 'torchvision is not installed', a line per quantized
    tensor that onnxruntime logs on the root logger): the agreement check and our own log say what counts."""
    loggers = [logging.getLogger(name) for name in NOISY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    logging.getLogger().addFilter(_not_onnxruntime)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
        logging.getLogger().removeFilter(_not_onnxruntime)


def _not_onnxruntime(record: logging.LogRecord) -> bool:
    return "onnxruntime" not in record.pathname


def _check_agreement(staging: Path, reference: Reference, source: str) -> None:
    texts = list(CHECK_TEXTS)
    exported = OnnxModel(staging, MODEL_FILE, "cpu").encode(texts, "", len(texts))
    agreement = float(np.min(np.sum(exported * reference.encode(texts, "", len(texts)), axis=1)))
    if agreement < MIN_AGREEMENT:
        raise ConfigError(
            f"the ONNX export of {source!r} disagrees with torch (cosine {agreement:.4f}): use SYNCER_ST_BACKEND=torch"
        )


def _quantize(directory: Path) -> None:
    require("onnx", extra="onnx")
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    large = (directory / f"{MODEL_FILE}.data").exists()
    with tempfile.TemporaryDirectory(dir=directory, prefix=".quantize-") as tmp:
        prepared, staged = Path(tmp) / "prepared.onnx", Path(tmp) / "staged"
        staged.mkdir()
        # onnxruntime's recommended pre-processing; its symbolic shape inference fails on dynamo graphs.
        with _quiet():
            quant_pre_process(directory / MODEL_FILE, prepared, skip_symbolic_shape=True, save_as_external_data=large)
            # Per-channel int8 MatMul weights: cosine to fp32 0.994 mean on real text; per-tensor gave 0.956.
            quantize_dynamic(
                prepared,
                staged / INT8_FILE,
                per_channel=True,
                weight_type=QuantType.QInt8,
                op_types_to_quantize=["MatMul"],
                use_external_data_format=large,
            )
        _publish(staged, directory)
    log.info("quantized %s to %s", directory / MODEL_FILE, directory / INT8_FILE)


def _publish(staging: Path, directory: Path) -> None:
    """Move the staged files in by atomic renames: weight data, then graphs, then meta.json, which commits."""
    for file in sorted(staging.iterdir(), key=lambda p: (p.name == META_FILE, p.suffix == ".onnx")):
        os.replace(file, directory / file.name)
