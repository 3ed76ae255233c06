"""Throughput of the local backends (torch, onnx, onnx-int8) through the provider, and their agreement with torch.

Each backend embeds the same real texts (Python docstrings from ``syncer.demo.corpus``) in one
``embed_documents`` call per run, as a worker does with a claimed window. Runs alternate between the
backends, so that drift on a shared machine hits them alike; the load average is printed with the
results for the same reason. "start s" is the provider's start: the one-time ONNX export and
quantization are in it when the cache directory is new.

    python bench/backends.py [--texts 512] [--runs 3] [--data-dir DIR]

The ONNX exports are cached in DIR/models (default: a temporary directory, removed afterwards).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from syncer.demo import corpus
from syncer.providers.sentence_transformers import SentenceTransformerProvider, local_options
from syncer.report import format_table
from syncer.settings import Settings

BACKENDS = ("torch", "onnx", "onnx-int8")
WARMUP_TEXTS = 32
PAUSE_SECONDS = 1.0  # lets the previous backend's spinning worker threads (OpenMP, onnxruntime) go idle


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=512, help="corpus texts embedded per run")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per backend")
    parser.add_argument("--data-dir", type=Path, help="where the ONNX exports are cached (default: temporary)")
    return parser.parse_args(argv)


def start(data_dir: Path) -> tuple[dict[str, SentenceTransformerProvider], dict[str, float]]:
    """Every backend's provider, and the seconds each took to start."""
    providers, seconds = {}, {}
    for backend in BACKENDS:
        began = time.perf_counter()
        providers[backend] = SentenceTransformerProvider(
            local_options(Settings(database_url="unused", sources=[], data_dir=data_dir, st_backend=backend))
        )
        seconds[backend] = time.perf_counter() - began
    return providers, seconds


def measure(
    providers: dict[str, SentenceTransformerProvider], texts: list[str], runs: int
) -> tuple[dict[str, list[float]], dict[str, np.ndarray]]:
    """Rows/s of every run per backend, and each backend's vectors of the last run."""
    for provider in providers.values():
        provider.embed_documents(texts[:WARMUP_TEXTS])  # first-call allocations are not throughput
    rates: dict[str, list[float]] = {backend: [] for backend in providers}
    vectors: dict[str, np.ndarray] = {}
    for _ in range(runs):
        for backend, provider in providers.items():
            time.sleep(PAUSE_SECONDS)
            began = time.perf_counter()
            vectors[backend] = provider.embed_documents(texts)
            rates[backend].append(len(texts) / (time.perf_counter() - began))
    return rates, vectors


def table(
    providers: dict[str, SentenceTransformerProvider],
    seconds: dict[str, float],
    rates: dict[str, list[float]],
    vectors: dict[str, np.ndarray],
) -> str:
    headers = ["backend", "model_id", "start s", "rows/s min", "median", "max", "x torch", "cos mean", "cos min"]
    reference = statistics.median(rates["torch"])
    rows = []
    for backend, provider in providers.items():
        cosine = np.sum(vectors[backend] * vectors["torch"], axis=1)
        median = statistics.median(rates[backend])
        rows.append(
            (backend, provider.model_id, f"{seconds[backend]:.1f}", f"{min(rates[backend]):.1f}", f"{median:.1f}",
             f"{max(rates[backend]):.1f}", f"{median / reference:.2f}", f"{cosine.mean():.4f}", f"{cosine.min():.4f}")
        )  # fmt: skip
    return format_table(headers, rows)


def context(texts: list[str], providers: dict[str, SentenceTransformerProvider], runs: int) -> str:
    import onnxruntime
    import torch

    tokens = [min(providers["torch"].fit(text)[1], providers["torch"].max_input_tokens) for text in texts]
    return (
        f"{len(texts)} corpus texts (mean {statistics.mean(tokens):.1f} tokens after truncation), {runs} runs, "
        f"encode batch {providers['torch'].batch_size}, {os.cpu_count()} cpus, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), onnxruntime {onnxruntime.__version__}, "
        f"device {providers['torch'].device}"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", category=DeprecationWarning)  # corpus() imports old stdlib modules
    texts = [text for _, text in corpus(args.texts)]
    with tempfile.TemporaryDirectory(prefix="syncer-bench-") as tmp:
        providers, seconds = start(args.data_dir or Path(tmp))
        load_before = os.getloadavg()[0]
        rates, vectors = measure(providers, texts, args.runs)
        load_after = os.getloadavg()[0]
    print(f"syncer local backends: {context(texts, providers, args.runs)}")
    print(f"load average (1 min) before / after the timed runs: {load_before:.2f} / {load_after:.2f}\n")
    print(table(providers, seconds, rates, vectors))
    print("\nx torch: ratio of median rows/s; cos: cosine of each text's vector with torch's")
    return 0


if __name__ == "__main__":
    sys.exit(main())
