#!/usr/bin/env bash
# Create .venv and install syncer with everything the demo and the tests need.
# torch comes first and pinned (SYNCER_TORCH overrides): a bare torch requirement would pull a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
pip_install() {
    # This machine's pip configuration names local mirrors that may be absent: drop those notices.
    .venv/bin/python -m pip install --quiet --disable-pip-version-check "$@" 2>&1 \
        | { grep -v "is ignored: it is neither a file nor a directory" || true; }
}
pip_install "${SYNCER_TORCH:-torch==2.13.0}"
pip_install -e ".[dev]"
