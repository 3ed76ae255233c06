"""The sentence-transformers provider on the real packaged MiniLM: torch, ONNX export and int8, prompts, limits."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import NoReturn

import numpy as np
import pytest

from syncer.demo import corpus
from syncer.embedding import embed
from syncer.errors import ConfigError
from syncer.providers import Fits, load_provider, onnx_runtime
from syncer.providers.onnx_runtime import ensure_exported, execution_providers, source_fingerprint
from syncer.providers.sentence_transformers import SentenceTransformerProvider, model_prompts, resolve_model
from syncer.settings import Settings

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
FOLDER = "sentence-transformers--all-MiniLM-L6-v2"  # the cache directory of its exports
LONG = "the quick brown fox jumps over the lazy dog " * 60  # ~540 tokens, MiniLM takes 256


def make(data_dir: Path, **settings: object) -> SentenceTransformerProvider:
    provider = load_provider(Settings(database_url="unused", sources=[], data_dir=data_dir, **settings))
    assert isinstance(provider, SentenceTransformerProvider)
    return provider


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1)


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return [text for _, text in corpus(100)]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("syncer-data")


@pytest.fixture(scope="module")
def onnx(data_dir: Path) -> SentenceTransformerProvider:
    return make(data_dir, st_backend="onnx")


@pytest.fixture(scope="module")
def int8(data_dir: Path, onnx: SentenceTransformerProvider) -> SentenceTransformerProvider:
    return make(data_dir, st_backend="onnx-int8")


@pytest.fixture(scope="module")
def torch_vectors(minilm: SentenceTransformerProvider, texts: list[str]) -> np.ndarray:
    return minilm.embed_documents(texts)


def test_onnx_vectors_agree_with_torch(
    onnx: SentenceTransformerProvider, texts: list[str], torch_vectors: np.ndarray
) -> None:
    vectors = onnx.embed_documents(texts)
    assert vectors.shape == (100, 384) and vectors.dtype == np.float32
    assert cosines(vectors, torch_vectors).min() >= 0.99
    assert np.linalg.norm(vectors, axis=1) == pytest.approx(1.0, abs=1e-5)


def test_int8_vectors_stay_close_to_torch(
    int8: SentenceTransformerProvider, texts: list[str], torch_vectors: np.ndarray
) -> None:
    agreement = cosines(int8.embed_documents(texts), torch_vectors)
    assert agreement.mean() >= 0.98
    assert agreement.min() >= 0.95


def test_model_ids_keep_int8_apart(
    minilm: SentenceTransformerProvider, onnx: SentenceTransformerProvider, int8: SentenceTransformerProvider
) -> None:
    assert minilm.model_id == onnx.model_id == MINILM
    assert int8.model_id == f"{MINILM}+int8"
    assert onnx.dimensions == int8.dimensions == minilm.dimensions == 384


def test_export_is_cached_and_reused(data_dir: Path, int8: SentenceTransformerProvider) -> None:
    folder = data_dir / "models" / FOLDER
    files = [folder / "model.onnx", folder / "model-int8.onnx", folder / "tokenizer.json", folder / "meta.json"]
    before = [f.stat().st_mtime_ns for f in files]

    again = make(data_dir, st_backend="onnx-int8")

    assert [f.stat().st_mtime_ns for f in files] == before
    assert not [p for p in folder.iterdir() if p.name.startswith(".export-") or p.name.startswith(".quantize-")]
    assert np.allclose(again.embed_query("tomato soup"), int8.embed_query("tomato soup"))


def test_a_changed_model_is_exported_again(data_dir: Path, onnx: SentenceTransformerProvider, tmp_path: Path) -> None:
    (tmp_path / "meta.json").write_bytes((data_dir / "models" / FOLDER / "meta.json").read_bytes())

    def export_wanted() -> NoReturn:
        raise LookupError("the model is loaded for an export")

    ensure_exported(tmp_path, resolve_model(MINILM), False, export_wanted)  # same files: nothing to do
    meta = json.loads((tmp_path / "meta.json").read_text())
    (tmp_path / "meta.json").write_text(json.dumps(meta | {"fingerprint": "another model"}))
    with pytest.raises(LookupError):
        ensure_exported(tmp_path, resolve_model(MINILM), False, export_wanted)


def test_fingerprint_follows_the_model_files(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    first = source_fingerprint(str(tmp_path))
    (tmp_path / "config.json").write_text('{"changed": 1}')
    assert source_fingerprint(str(tmp_path)) != first
    assert source_fingerprint("no-such-org/no-such-model") is None


def test_prompts_prefix_documents_and_queries(
    minilm: SentenceTransformerProvider, data_dir: Path, onnx: SentenceTransformerProvider
) -> None:
    prompts = {"document_prompt": "passage: ", "query_prompt": "query: "}
    text = "Tomatoes are simmered with onion and basil."
    raw = minilm.model.encode(["passage: " + text, "query: " + text], normalize_embeddings=True)
    for provider, plain in [(make(data_dir, **prompts), minilm), (make(data_dir, st_backend="onnx", **prompts), onnx)]:
        assert cosines(provider.embed_documents([text]), raw[:1])[0] > 0.9999
        assert cosines(provider.embed_query(text)[None], raw[1:])[0] > 0.9999
        assert np.allclose(provider.embed_documents([text]), plain.embed_documents(["passage: " + text]), atol=1e-6)
        assert provider.fit(text)[1] == plain.fit("passage: " + text)[1]


def test_model_prompts_are_those_of_encode_query_and_encode_document() -> None:
    e5 = SimpleNamespace(prompts={"query": "query: ", "passage": "passage: "}, default_prompt_name=None)
    assert model_prompts(e5) == {"query": "query: ", "document": "passage: "}
    one_prompt = SimpleNamespace(prompts={"retrieval": "Represent this: "}, default_prompt_name="retrieval")
    assert model_prompts(one_prompt) == {"query": "Represent this: ", "document": "Represent this: "}


def test_without_prompts_a_query_embeds_like_a_document(
    minilm: SentenceTransformerProvider, onnx: SentenceTransformerProvider
) -> None:
    for provider in (minilm, onnx):
        assert np.allclose(provider.embed_query("compress files"), provider.embed_documents(["compress files"])[0])


def test_fit_counts_tokens_beyond_the_limit(
    minilm: SentenceTransformerProvider, onnx: SentenceTransformerProvider
) -> None:
    for provider in (minilm, onnx):
        assert isinstance(provider, Fits)
        assert provider.max_input_tokens == 256
        text, tokens = provider.fit(LONG)
        assert text == LONG and tokens == 9 * 60 + 2  # nine words a sentence, plus [CLS] and [SEP]
        assert provider.fit("hello")[1] == 3

    result = embed(onnx, ["short", LONG], labels=["docs:1", "docs:2"], on_too_long="error")
    assert list(result.vectors) == [0] and "542 tokens" in result.errors[1]
    assert np.allclose(onnx.embed_documents([LONG]), onnx.embed_documents([LONG + " and much more"]), atol=1e-6)


def test_device_is_chosen_automatically(minilm: SentenceTransformerProvider, onnx: SentenceTransformerProvider) -> None:
    assert minilm.device == onnx.device == "cpu"
    assert str(minilm.model.device) == "cpu"


def test_onnx_devices() -> None:
    assert execution_providers(None, ["CPUExecutionProvider"]) == ("cpu", ["CPUExecutionProvider"])
    with pytest.raises(ConfigError, match="onnxruntime-gpu"):
        execution_providers("cuda", ["CPUExecutionProvider"])
    with pytest.raises(ConfigError, match="cpu or cuda"):
        execution_providers("mps", ["CPUExecutionProvider"])


def test_empty_batch(onnx: SentenceTransformerProvider, minilm: SentenceTransformerProvider) -> None:
    for provider in (minilm, onnx):
        assert provider.embed_documents([]).shape == (0, 384)


def test_missing_onnxruntime_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(ConfigError, match=r"onnxruntime is not installed.*syncer\[onnx\]"):
        make(tmp_path, st_backend="onnx")
    assert not (tmp_path / "models").exists()


def test_failed_export_names_the_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def unsupported(model: object, path: Path) -> None:
        raise RuntimeError("Unsupported: data-dependent control flow")

    monkeypatch.setattr(onnx_runtime, "_run_exporter", unsupported)
    with pytest.raises(ConfigError, match="cannot be exported to ONNX .*data-dependent.*SYNCER_ST_BACKEND=torch"):
        make(tmp_path, st_backend="onnx")
    assert [p.name for p in (tmp_path / "models" / FOLDER).iterdir()] == [".lock"]  # nothing half-written


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_unloadable_model_names_it(tmp_path: Path, backend: str) -> None:
    with pytest.raises(ConfigError, match="model '/no/such/model' cannot be loaded"):
        make(tmp_path, model="/no/such/model", st_backend=backend)
