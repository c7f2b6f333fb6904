#!/usr/bin/env bash
# The test command: set up the environment, then run the whole suite (slow cases included) on PYTEST_WORKERS
# processes (2: one per core here); `-n 0` in the arguments runs it in this process instead.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# One BLAS/OpenMP thread per process (the test processes and what they start): two processes with a thread pool
# each would oversubscribe the two cores.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
exec "${VENV:-.venv}/bin/python" -m pytest -n "${PYTEST_WORKERS:-2}" "$@"
