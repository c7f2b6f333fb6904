#!/usr/bin/env bash
# Downloads into .whl/ the wheels the GPU machine lacks (it has python3.12, torch, numpy, safetensors, transformers,
# accelerate, peft, huggingface_hub, pillow and no network), at the exact versions of this repo's virtualenv, for
# CPython 3.12 manylinux x86_64. bench/gpu/run.sh installs them there into a temp site dir. Run it where there is
# network (PyPI), before the GPU session; `bash bench/gpu/fetch_wheels.sh [--with NAME==VERSION ...]` adds more.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv_python="${VENV_PYTHON:-.venv/bin/python}"
dest=.whl
limit_mib=50  # the device tool carries at most 64 MiB, the repository included

packages=(
  # imported by the project and absent there
  diffusers runpod soundfile soxr matplotlib requests filelock
  pydantic pydantic_core annotated-types typing-inspection typing-extensions
  # their import-time dependencies: soundfile; matplotlib; requests
  cffi pycparser
  contourpy cycler fonttools kiwisolver pyparsing python-dateutil six
  urllib3 certifi charset-normalizer idna
  # what `import runpod` loads (handler.py); paramiko, aiohttp and the rest are imported at the top of runpod
  aiohttp aiohttp-retry aiohappyeyeballs aiosignal aiodns pycares attrs frozenlist multidict propcache yarl brotli
  backoff backports-zstd bcrypt cryptography invoke paramiko pynacl pysocks py-cpuinfo tomli tomlkit tqdm-loggable
  # the CUDA tests
  pytest pluggy iniconfig pytest-timeout pygments
)

pins=()
for name in "${packages[@]}"; do
  version="$("$venv_python" -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$name")" || {
    echo "$name is not installed in $venv_python's environment" >&2
    exit 1
  }
  pins+=("$name==$version")
done
while [ $# -gt 0 ]; do
  case "$1" in
    --with) pins+=("$2"); shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done

rm -rf "$dest"
mkdir -p "$dest"
"$venv_python" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --dest "$dest" \
  --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform any "${pins[@]}"

count="$(find "$dest" -type f -name '*.whl' | wc -l)"
mib="$(du -sm "$dest" | cut -f1)"
echo "$count wheels, $mib MiB in $dest/"
if [ "$count" -ne "${#pins[@]}" ]; then
  echo "expected ${#pins[@]} wheels" >&2
  exit 1
fi
if [ "$mib" -gt "$limit_mib" ]; then
  echo "over $limit_mib MiB: the device tool could not carry them with the repository" >&2
  exit 1
fi
