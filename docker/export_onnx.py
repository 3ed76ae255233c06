"""Export SYNCER_MODEL to ONNX, fp32 and int8, into SYNCER_DATA_DIR/models: what a worker does on its first start
with SYNCER_ST_BACKEND=onnx-int8, done while building the image (docker/Dockerfile, stage onnx-export).

The result runs with onnxruntime and tokenizers alone (the slim image); tests/test_deploy.py checks that.
"""

from __future__ import annotations

from syncer.providers import load_provider
from syncer.settings import Settings


def main() -> None:
    # Loading the provider with an ONNX backend exports the model (and quantizes it for int8) unless it is cached.
    provider = load_provider(Settings(st_backend="onnx-int8"))
    print(f"exported {provider.model_id} ({provider.dimensions} dimensions)")


if __name__ == "__main__":
    main()
