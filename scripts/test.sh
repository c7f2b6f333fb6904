#!/usr/bin/env bash
# The test command: set up the environment, then run the whole suite (slow cases included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${VENV:-.venv}/bin/python" -m pytest "$@"
