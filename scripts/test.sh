#!/usr/bin/env bash
# Quick start, part 2: set up, then run the tests against a real PostgreSQL
# (SYNCER_TEST_DATABASE_URL, else testcontainers if Docker answers, else the embedded server).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
HF_HUB_OFFLINE=1 exec .venv/bin/python -m pytest "$@"
