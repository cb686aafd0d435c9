#!/bin/sh
# The app image's entrypoint (/usr/local/bin/autoresearch-entrypoint): starts as root, drops
# to the owner of the bind-mounted repo, then runs `autoresearch "$@"`.
#
#   AUTORESEARCH_OWNER_OF  the path whose owner the services run as (default /repo). Missing:
#                          1000:1000. Owned by root: the command stays root.
#   AUTORESEARCH_OWN       space-separated paths (e.g. the data home) that, when they exist
#                          and belong to root, are given to that owner first: the path
#                          itself, not what is inside (Docker creates a missing bind-mount
#                          source as root).
#
# When /var/run/docker.sock is mounted, its group is added as a supplementary group. Started
# as non-root already (compose's `user:`), it runs the command as that user and changes
# nothing. A first argument that is an absolute path or `sh` is run instead of autoresearch,
# under the same user: `docker run --rm autoresearch-app:latest /usr/bin/id`.
set -eu

case "${1-}" in
    /* | sh) ;;
    *) set -- autoresearch "$@" ;;
esac

if [ "$(id -u)" != 0 ]; then
    exec "$@"
fi

owner_of=${AUTORESEARCH_OWNER_OF:-/repo}
if [ -e "$owner_of" ]; then
    uid=$(stat -L -c %u "$owner_of")
    gid=$(stat -L -c %g "$owner_of")
else
    uid=1000
    gid=1000
fi
if [ "$uid" = 0 ]; then
    exec "$@"
fi

for path in ${AUTORESEARCH_OWN-}; do
    if [ -e "$path" ] && [ "$(stat -L -c %u "$path")" = 0 ]; then
        chown "$uid:$gid" "$path"
    fi
done

if [ -S /var/run/docker.sock ]; then
    groups="--groups=$(stat -L -c %g /var/run/docker.sock)"
else
    groups=--clear-groups
fi

# The user's home when the image knows the uid and the folder is theirs, else /tmp.
home=$(getent passwd "$uid" | cut -d: -f6) || home=
if [ -z "$home" ] || [ ! -d "$home" ] || [ "$(stat -L -c %u "$home")" != "$uid" ]; then
    home=/tmp
fi
export HOME="$home"

exec setpriv --reuid="$uid" --regid="$gid" "$groups" -- "$@"
