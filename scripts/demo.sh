#!/usr/bin/env bash
# The main job: run the worker once on test_input.json (tiny demo models when there is no GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${VENV:-.venv}/bin/python" handler.py "$@"
