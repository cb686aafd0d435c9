#!/usr/bin/env bash
# Local base images, for hosts that cannot pull images from Docker Hub:
#
#   autoresearch-debian:bookworm   Debian bookworm (debootstrap --variant=minbase, docker import)
#   autoresearch-redis:local       Debian's redis-server on that base (compose's REDIS_IMAGE)
#
#   sudo docker/base.sh
#   docker build -f docker/app.Dockerfile -t autoresearch-app:latest \
#     --build-arg BASE=autoresearch-debian:bookworm .
#   docker build -f docker/runner.Dockerfile -t autoresearch-runner:latest \
#     --build-arg BASE=autoresearch-debian:bookworm --build-arg TORCH_SPEC=torch==2.13.0 .
#
# Needs root (debootstrap), debootstrap and a Docker engine; it reaches the Debian mirror
# only. An image that exists already is reused: `docker rmi` it to build it again.
#
#   DEBIAN_MIRROR            default http://deb.debian.org/debian
#   DEBIAN_SECURITY_MIRROR   default http://deb.debian.org/debian-security ("" leaves it out)
#
# Keep the mirrors on http: the image has no CA certificates until a Dockerfile installs
# ca-certificates (apt checks the archive's signatures either way).
set -euo pipefail

BASE_IMAGE=autoresearch-debian:bookworm
REDIS_IMAGE=autoresearch-redis:local
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR-http://deb.debian.org/debian-security}

die() { echo "base.sh: $*" >&2; exit 1; }
trap 'echo "base.sh: failed at line $LINENO: $BASH_COMMAND" >&2' ERR

[ "$(id -u)" = 0 ] || die "must run as root (debootstrap builds a root file system): sudo $0"
command -v docker >/dev/null || die "docker is not installed"
docker info >/dev/null 2>&1 || die "the Docker engine does not answer (docker info)"

work=
cleanup() {
    [ -n "$work" ] && [ -d "$work" ] || return 0
    # debootstrap may leave /proc and /sys mounted in the target when it fails.
    awk -v root="$work/" 'index($2, root) == 1 { print $2 }' /proc/mounts | sort -r |
        while read -r m; do umount -l "$m" 2>/dev/null || true; done
    rm -rf --one-file-system "$work"
}
trap cleanup EXIT

if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    echo "base.sh: $BASE_IMAGE exists, reused"
else
    command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"
    start=$(date +%s)
    # Not under /tmp: a tmpfs mounted nodev would break the chroot's /dev/null.
    work=$(mktemp -d /var/tmp/autoresearch-debootstrap.XXXXXX)
    rootfs=$work/rootfs
    echo "base.sh: debootstrap --variant=minbase $SUITE from $MIRROR (a few minutes)"
    if ! debootstrap --variant=minbase "$SUITE" "$rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1; then
        tail -n 20 "$work/debootstrap.log" >&2
        trap - ERR
        die "debootstrap failed (its last lines above)"
    fi

    # What Debian's own container images do: the updates and security suites, no daemon
    # started by a package's install script, no .deb kept after apt-get install.
    {
        echo "deb $MIRROR $SUITE main"
        echo "deb $MIRROR $SUITE-updates main"
        [ -z "$SECURITY_MIRROR" ] || echo "deb $SECURITY_MIRROR $SUITE-security main"
    } >"$rootfs/etc/apt/sources.list"
    printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
    chmod 0755 "$rootfs/usr/sbin/policy-rc.d"
    cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
    # The engine provides these in each container; the host's copies stay out of the image.
    rm -f "$rootfs/etc/resolv.conf" "$rootfs/etc/hostname"
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
        "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/log/* "$rootfs"/tmp/*

    tar --numeric-owner --xattrs -C "$rootfs" -c . |
        docker import --change 'CMD ["bash"]' \
            --message "debootstrap --variant=minbase $SUITE $MIRROR" - "$BASE_IMAGE" >/dev/null
    cleanup
    work=
    echo "base.sh: built $BASE_IMAGE in $(($(date +%s) - start)) s"
fi

if docker image inspect "$REDIS_IMAGE" >/dev/null 2>&1; then
    echo "base.sh: $REDIS_IMAGE exists, reused"
else
    start=$(date +%s)
    # Like Docker Hub's redis image: /data is the working folder (compose mounts its volume
    # there; a new named volume takes the folder's owner), the server runs as user redis, and
    # protected mode is off unless a config file or --protected-mode says otherwise (that
    # image compiles it off: the container's network is the boundary, and without a password
    # Debian's default would refuse every other container).
    docker build -q --build-arg BASE="$BASE_IMAGE" -t "$REDIS_IMAGE" - >/dev/null <<'EOF'
ARG BASE
FROM ${BASE}
RUN set -eu; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server; \
    rm -rf /var/lib/apt/lists/*; \
    printf '%s\n' '#!/bin/sh' \
        'case " $* " in *" --protected-mode "*) exec /usr/bin/redis-server "$@" ;; esac' \
        'case "${1-}" in "" | -*) exec /usr/bin/redis-server "$@" --protected-mode no ;; esac' \
        'exec /usr/bin/redis-server "$@"' >/usr/local/bin/redis-server; \
    chmod 0755 /usr/local/bin/redis-server; \
    [ "$(command -v redis-server)" = /usr/local/bin/redis-server ]; \
    command -v redis-cli >/dev/null; \
    install -d -o redis -g redis /data
WORKDIR /data
USER redis
EXPOSE 6379
CMD ["redis-server"]
EOF
    echo "base.sh: built $REDIS_IMAGE in $(($(date +%s) - start)) s"
fi
