#!/usr/bin/env bash
# The one entry of the GPU run: install the carried wheels (no network there), then every step of
# bench/gpu/gpu_report.py within one budget. `--cpu-smoke` runs the same steps at tiny size on this machine's CPU.
# Extra arguments go to gpu_report.py (--budget-s, --work, --only). Exit code: 0 only when every step is ok.
set -euo pipefail
cd "$(dirname "$0")/../.."

# The repo's virtualenv where there is one (a dev machine, CI); the system python3 on the GPU machine.
python="${PYTHON:-}"
if [ -z "$python" ]; then
  if [ -x .venv/bin/python ]; then python=.venv/bin/python; else python=python3; fi
fi

# Wheels fetched by bench/gpu/fetch_wheels.sh: the packages the GPU machine lacks, at the project's versions.
# They go into a temp site dir first on the path, so they never touch the machine's own packages.
shopt -s nullglob
wheels=(.whl/*.whl)
if [ "${#wheels[@]}" -gt 0 ]; then
  site="$(mktemp -d "${TMPDIR:-/tmp}/gpu-site.XXXXXX")"
  "$python" -m pip install -q --no-index --no-deps --disable-pip-version-check --target "$site" "${wheels[@]}"
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

# The hard stop: the report is rewritten after every step, so even this kill leaves what was measured.
exec timeout -k 10 "${GPU_RUN_LIMIT_S:-460}" "$python" bench/gpu/gpu_report.py "$@"
