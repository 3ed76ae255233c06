#!/usr/bin/env bash
# Create .venv and install syncer with everything the demo and the tests need.
# torch comes first and pinned (SYNCER_TORCH overrides): a bare torch requirement would pull a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check "${SYNCER_TORCH:-torch==2.13.0}"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
