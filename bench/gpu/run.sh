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

# Wheels fetched by bench/gpu/fetch_wheels.sh: the packages the GPU machine lacks, at the project's versions
# (CPython 3.12). They go into a temp site dir first on the path, never into the machine's own packages. The CPU
# smoke runs in this repo's environment, which has them all.
smoke=false
for arg in "$@"; do [ "$arg" = --cpu-smoke ] && smoke=true; done
shopt -s nullglob
wheels=(.whl/*.whl)
if [ "$smoke" = false ] && [ "${#wheels[@]}" -gt 0 ]; then
  site="$(mktemp -d "${TMPDIR:-/tmp}/gpu-site.XXXXXX")"
  if "$python" -m pip --version >/dev/null 2>&1; then
    "$python" -m pip install -q --no-index --no-deps --disable-pip-version-check --target "$site" "${wheels[@]}"
  else
    # no pip there: a wheel is a zip of its site-packages files, which is all an import needs
    for wheel in "${wheels[@]}"; do "$python" -m zipfile -e "$wheel" "$site"; done
  fi
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

# The GPU run's hard stop (8 minutes in all): the report is rewritten after every step, so even this kill leaves
# what was measured. The smoke has no such limit: it tests the run, not the speed.
if [ "$smoke" = true ]; then
  exec "$python" bench/gpu/gpu_report.py "$@"
fi
exec timeout -k 10 "${GPU_RUN_LIMIT_S:-460}" "$python" bench/gpu/gpu_report.py "$@"
