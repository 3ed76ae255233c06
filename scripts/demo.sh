#!/usr/bin/env bash
# Quick start, part 1: set up, then sync a sample table on the embedded PostgreSQL and search it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
HF_HUB_OFFLINE=1 exec .venv/bin/syncer demo "$@"
