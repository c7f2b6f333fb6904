# syntax=docker/dockerfile:1
# One image for every job type (music, image, dataset, training). No model weights by default: the worker
# fills a shared cache on the network volume on its first start. See the README, "Deploy a serverless endpoint".
#
#   docker build -t <you>/gpu-worker:0.1.0 .
#   docker build --build-arg BAKE_MODELS="sdxl-base" --secret id=hf_token,env=HF_TOKEN -t <you>/gpu-worker:0.1.0-sdxl .

# ---------------------------------------------------------------------------------------------------------------
# deps: Python, torch and every third-party dependency. Only pyproject.toml reaches this stage, so changing the
# code never reinstalls torch.
# ---------------------------------------------------------------------------------------------------------------
# The CUDA minor matches the torch wheel below; the image asks the host for a driver with CUDA >= 12.9, which is
# what allowedCudaVersions in .runpod/*.json must say. Ubuntu 24.04 ships Python 3.12.
FROM nvidia/cuda:12.9.1-runtime-ubuntu24.04 AS deps

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Unpinned apt packages on purpose: the base image is pinned, and these pick up its release's security fixes.
# hadolint ignore=DL3008
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# A venv: Ubuntu 24.04's system Python refuses pip installs (PEP 668).
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv "$VIRTUAL_ENV"

# torch from the official CUDA wheels, pinned, alone in its own layer (~4 GB). The cu128 index stops at torch 2.11;
# cu129 carries 2.8-2.13, with kernels for every GPU in the .runpod/hub.json pools (Ampere, Ada, Hopper). The same version as the CPU build in
# scripts/setup.sh, so the tests run the torch the image ships.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu129
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

# The rest of the dependency stack, resolved from pyproject.toml against stub packages (an empty README as well:
# setuptools reads it, and README edits must not invalidate this layer). Naming torch again keeps the CUDA build.
# The server extra is the worker's whole stack (the bare package is the light client). Versions: pyproject's bounds.
WORKDIR /app
COPY pyproject.toml ./
# hadolint ignore=DL3013
RUN mkdir -p worker_client worker cache \
 && touch README.md worker_client/__init__.py worker/__init__.py cache/__init__.py \
 && pip install ".[server]" "torch==${TORCH_VERSION}" \
 && pip uninstall -y gpu-worker \
 && rm -rf /app/*

# ---------------------------------------------------------------------------------------------------------------
# bake (optional): models fetched at build time into /models, the cache's BAKED_MODELS_DIR, in the cache's own
# published layout (<name>/ + .complete.json), so workers use them in place. Never under /runpod-volume: a mounted
# network volume would hide them. Only the cache code reaches this stage, so other code changes do not download
# the models again.
# ---------------------------------------------------------------------------------------------------------------
FROM deps AS bake
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Catalog names, space or comma separated: sdxl-base, ip-adapter-sdxl, heartmula. Empty: nothing baked.
ARG BAKE_MODELS=""
COPY cache/ /app/cache/
COPY worker_client/ /app/worker_client/
# The Hugging Face token, when one is needed, comes from a BuildKit secret: never in a layer or the image history.
# --profile production: the build has no GPU, and MODEL_PROFILE=auto would pick the tiny models. The Hugging Face
# cache and temp files go to a throw-away volume root, removed in the same layer with the staging and lock folders.
RUN --mount=type=secret,id=hf_token \
    mkdir -p /models \
 && if [ -n "${BAKE_MODELS}" ]; then \
      if [ -s /run/secrets/hf_token ]; then HF_TOKEN="$(cat /run/secrets/hf_token)"; export HF_TOKEN; fi; \
      for name in $(echo "${BAKE_MODELS}" | tr "," " "); do \
        VOLUME_ROOT=/tmp/bake python -m cache --models-dir /models --profile production ensure "$name" || exit 1; \
      done; \
      rm -rf /tmp/bake /models/.staging /models/.locks; \
    fi

# ---------------------------------------------------------------------------------------------------------------
# final: the worker.
# ---------------------------------------------------------------------------------------------------------------
FROM deps AS final

# Less fragmentation when music (LM + codec) and SDXL alternate on one GPU.
ENV PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
# HF_HOME, HF_HUB_CACHE and TMPDIR are deliberately not set here: the worker points them at the volume it finds at
# run time (/runpod-volume on serverless, /workspace on a pod); the container's root disk is small.

# Models before code: a code change keeps this (possibly tens of GB) layer.
COPY --from=bake /models /models

COPY . /app
# Installed too (no dependencies: they are all above), so `python -m cache` and `python -m worker.gateway` run from
# any directory on a pod; the in-tree build leftovers go.
RUN pip install --no-deps /app \
 && rm -rf /app/build /app/*.egg-info

# MODE=pod (a GPU pod instead of serverless): the hosted API's routes and the web UI (/ui) on port 8000, behind
# POD_API_KEY; see the README, "Run on a pod".
EXPOSE 8000
CMD ["python", "-u", "handler.py"]
