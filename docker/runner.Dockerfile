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
# or, without Docker Hub and download.pytorch.org, on docker/base.sh's Debian with the CPU
# wheel in docker/wheels/ (docker/certs/*.crt are trusted; docker/README.md):
#
#   docker build -f docker/runner.Dockerfile -t autoresearch-runner:cpu \
#     --build-arg BASE=autoresearch-debian:bookworm --build-arg TORCH_SPEC=torch==2.13.0 .
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

# Extra CA certificates (docker/certs/*.crt, PEM; a file may hold a whole bundle), for a
# TLS-intercepting proxy: trusted by apt and pip here, and by whatever runs later. A bundle is
# split into one file per certificate, so that update-ca-certificates adds every one of them.
COPY docker/certs/ /usr/local/share/ca-certificates/extra/

# A bare Debian base (docker/base.sh) has no Python: python3, its pip and its headers
# (Python.h: torch.compile builds C code, below) come from apt. apt runs for what is missing
# only: PyTorch's images and python:3.11-slim have all of it.
RUN set -eu; \
    cd /usr/local/share/ca-certificates/extra; \
    rm -f README.md; \
    for f in *.crt; do \
        [ -f "$f" ] && [ "$(grep -c -- '-----BEGIN CERTIFICATE-----' "$f")" -gt 1 ] || continue; \
        awk -v b="${f%.crt}" '/-----BEGIN CERTIFICATE-----/ { n++; out = sprintf("%s-%04d.crt", b, n); on = 1 } \
            on { print > out } /-----END CERTIFICATE-----/ { if (on) { close(out); on = 0 } }' "$f"; \
        rm -f "$f"; \
    done; \
    cd /; \
    pkgs=""; \
    command -v update-ca-certificates >/dev/null 2>&1 || pkgs="ca-certificates"; \
    if ! command -v python3 >/dev/null 2>&1; then \
        pkgs="$pkgs python3 python3-pip python3-dev"; \
    else \
        python3 -m pip --version >/dev/null 2>&1 || pkgs="$pkgs python3-pip"; \
        python3 -c "import os, sys, sysconfig; \
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')))" \
            || pkgs="$pkgs python3-dev"; \
    fi; \
    if [ -n "$pkgs" ]; then \
        apt-get update; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $pkgs; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    update-ca-certificates
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt

# Wheels put in docker/wheels/ are offered to pip (PIP_FIND_LINKS): a CPU torch wheel, where
# download.pytorch.org cannot be reached, is taken for TORCH_SPEC=torch==<its version>.
# They are deleted after the install, but the layer of this COPY keeps them: the image is
# larger by their size (nothing when the folder holds only its README.md).
COPY docker/wheels/ /tmp/wheels/

# PIP_BREAK_SYSTEM_PACKAGES only matters on a base whose Python is Debian's own (PEP 668):
# in a throwaway image there is no system to break.
RUN set -eu; \
    export PIP_BREAK_SYSTEM_PACKAGES=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_FIND_LINKS=/tmp/wheels; \
    if [ -n "${TORCH_SPEC}" ]; then python3 -m pip install --no-cache-dir ${TORCH_SPEC}; fi; \
    python3 -m pip install --no-cache-dir \
        "numpy==${NUMPY_VERSION}" \
        "tokenizers==${TOKENIZERS_VERSION}" \
        "pyarrow==${PYARROW_VERSION}" \
        "pyseccomp==${PYSECCOMP_VERSION}"; \
    rm -rf /tmp/wheels; \
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
