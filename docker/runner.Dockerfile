# The image candidates run in: torch, the harness's four libraries and the harness itself.
# Nothing of the orchestrator or the worker lives here, and no secret ever does.
#
#   docker build -f docker/runner.Dockerfile -t autoresearch-runner:latest .
#
# The default base is PyTorch's CUDA runtime image (torch 2.5.1, CUDA 12.4: the host needs an
# NVIDIA driver >= 550 and the NVIDIA container toolkit). A CPU image for laptops and CI:
#
#   docker build -f docker/runner.Dockerfile -t autoresearch-runner:cpu \
#     --build-arg BASE=python:3.11-slim \
#     --build-arg TORCH_SPEC="torch==2.5.1 --index-url https://download.pytorch.org/whl/cpu" .
#
# The docker runner starts one container per phase with --network none, a read-only root,
# no capabilities and user 1000:1000; it bind-mounts the harness over /opt/autoresearch/harness
# (the worker's own copy, so both always agree), the candidate, the data and a scratch folder.
# The copy baked in below is what a container started by hand sees.
ARG BASE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
FROM ${BASE}

# Pinned to the versions the project is tested with (pyproject.toml allows them).
ARG NUMPY_VERSION=2.4.6
ARG TOKENIZERS_VERSION=0.23.3
ARG PYARROW_VERSION=26.0.1
# The model server's network filter inside the container (harness/cage.py; the base's
# libseccomp). The container's own network_mode=none holds without it.
ARG PYSECCOMP_VERSION=0.1.2
# Empty: the base brings torch. Else pip arguments that install it (see the CPU example above).
ARG TORCH_SPEC=

# PIP_BREAK_SYSTEM_PACKAGES only matters on a base whose Python is Debian's own (PEP 668):
# in a throwaway image there is no system to break.
RUN set -eu; \
    export PIP_BREAK_SYSTEM_PACKAGES=1 PIP_DISABLE_PIP_VERSION_CHECK=1; \
    if [ -n "${TORCH_SPEC}" ]; then python3 -m pip install --no-cache-dir ${TORCH_SPEC}; fi; \
    python3 -m pip install --no-cache-dir \
        "numpy==${NUMPY_VERSION}" \
        "tokenizers==${TOKENIZERS_VERSION}" \
        "pyarrow==${PYARROW_VERSION}" \
        "pyseccomp==${PYSECCOMP_VERSION}"; \
    python3 -c "import torch" 2>/dev/null || { \
        echo "runner.Dockerfile: the base has no torch; pass --build-arg TORCH_SPEC=..." >&2; \
        exit 1; }

# torch.compile needs a compiler at its first compiled call: on a GPU Triton builds a small
# C launcher, on a CPU inductor builds C++ kernels; both need Python's headers (PyTorch's
# runtime images and python:3.11-slim have no compiler).
RUN set -eu; \
    if ! command -v cc >/dev/null 2>&1 || ! command -v c++ >/dev/null 2>&1; then \
        apt-get update; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            gcc g++ libc6-dev; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    python3 -c "import os, sysconfig; h = os.path.join(sysconfig.get_paths()['include'], 'Python.h'); \
assert os.path.exists(h), 'runner.Dockerfile: no ' + h + ' (install the python3-dev of the base)'"

# The user the runner starts phases as (1000:1000); unless the base already has uid 1000.
RUN set -eu; \
    if ! getent passwd 1000 >/dev/null; then \
        getent group 1000 >/dev/null || groupadd --gid 1000 runner; \
        useradd --uid 1000 --gid 1000 --create-home --shell /usr/sbin/nologin runner; \
    fi

COPY harness/ /opt/autoresearch/harness/

ENV PYTHONPATH=/opt/autoresearch \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 1000:1000
WORKDIR /tmp
CMD ["python3", "-c", "import harness, torch; print('autoresearch runner: torch', torch.__version__)"]
