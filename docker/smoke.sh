#!/usr/bin/env bash
# `make compose-smoke`: the whole compose stack on one machine without a GPU, in a few minutes.
#
# Builds autoresearch-app:latest and autoresearch-runner:latest (SMOKE_SKIP_BUILD=1 reuses
# them), then, with PROFILE=cpu SOURCE=local MAX_EXPERIMENTS=2 PROPOSER=mutate, a temporary
# AUTORESEARCH_HOME and a throwaway clone of this repo as REPO_DIR, starts the stack as project
# autoresearch-smoke, waits for the orchestrator to exit and checks: its exit code is 0,
# runs/<TAG>/results.tsv has 3 rows (baseline + 2) with a val_bpb on the baseline, the branch
# autoresearch/<TAG> exists in the clone and no candidate container is left. It always tears
# the stack down (down -v) and removes its temporary folders (SMOKE_KEEP=1 keeps the folders).
#
# Settings (environment):
#   APP_BASE            base of the app image (default: the Dockerfile's, python:3.11-slim)
#   RUNNER_BASE         base of the runner image (default: compose's, the CUDA PyTorch image)
#   RUNNER_TORCH_SPEC   pip arguments installing torch in the runner (default: none), e.g.
#                       RUNNER_BASE=python:3.11-slim \
#                       RUNNER_TORCH_SPEC="torch==2.5.1 --index-url https://download.pytorch.org/whl/cpu"
#   REDIS_IMAGE         the Redis image (default: redis:7-alpine)
#   SMOKE_SKIP_BUILD=1  reuse the existing images instead of building them
#   SMOKE_TIMEOUT_S     how long to wait for the orchestrator (default: 720)
#   COMPOSE             the compose command (default: `docker compose`, else `docker-compose`)
set -euo pipefail

cd "$(dirname "$0")/.."
repo_root=$(pwd)

project=autoresearch-smoke
timeout_s=${SMOKE_TIMEOUT_S:-720}
app_image=autoresearch-app:latest
runner_image=autoresearch-runner:latest
redis_image=${REDIS_IMAGE:-redis:7-alpine}
runner_base=${RUNNER_BASE:-pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime}
runner_torch_spec=${RUNNER_TORCH_SPEC:-}
host_name=smoke

say() { printf 'smoke: %s\n' "$*"; }
fail() {
    printf '\nsmoke: FAILED: %s\n' "$*" >&2
    exit 1
}

if [ -n "${COMPOSE:-}" ]; then
    read -r -a compose_cmd <<<"$COMPOSE"
elif docker compose version >/dev/null 2>&1; then
    compose_cmd=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
    compose_cmd=(docker-compose)
else
    fail "neither 'docker compose' nor 'docker-compose' found"
fi
docker info >/dev/null 2>&1 || fail "no Docker engine answers (docker info)"

start_s=$(date +%s)

# --- images ---
if [ "${SMOKE_SKIP_BUILD:-0}" = 1 ]; then
    say "SMOKE_SKIP_BUILD=1: reusing $app_image and $runner_image"
    for image in "$app_image" "$runner_image"; do
        docker image inspect "$image" >/dev/null 2>&1 || fail "image $image not found (build it, or unset SMOKE_SKIP_BUILD)"
    done
else
    app_args=()
    [ -n "${APP_BASE:-}" ] && app_args+=(--build-arg "BASE=$APP_BASE")
    say "building $app_image${APP_BASE:+ on $APP_BASE}"
    docker build -f docker/app.Dockerfile "${app_args[@]}" -t "$app_image" . ||
        fail "building $app_image"
    say "building $runner_image on $runner_base${runner_torch_spec:+ (torch: $runner_torch_spec)}"
    docker build -f docker/runner.Dockerfile --build-arg "BASE=$runner_base" \
        --build-arg "TORCH_SPEC=$runner_torch_spec" -t "$runner_image" . ||
        fail "building $runner_image"
fi
docker image inspect "$redis_image" >/dev/null 2>&1 ||
    say "note: $redis_image is not here; compose will try to pull it (REDIS_IMAGE picks another)"

# --- temporary home, clone and env file ---
tag=smoke-$(date +%Y%m%d-%H%M%S)
work=$(mktemp -d "${TMPDIR:-/tmp}/autoresearch-smoke.XXXXXX")
home=$work/home
clone=$work/repo
env_file=$work/smoke.env
mkdir -p "$home"
# The services run as this user; the candidate containers (uid 1000) read what it writes.
chmod 0755 "$work" "$home"

compose() { "${compose_cmd[@]}" -p "$project" --env-file "$env_file" -f compose.yaml -f docker/smoke.override.yaml "$@"; }

print_logs() {
    say "--- service logs (last 60 lines each) ---"
    compose logs --no-color --tail 60 2>&1 || true
}

cleanup() {
    local rc=$?
    set +e
    if [ "$rc" -ne 0 ] && [ -f "$env_file" ]; then
        print_logs >&2
    fi
    if [ -f "$env_file" ]; then
        say "tearing down (down -v)"
        compose down -v --remove-orphans --timeout 20 >/dev/null 2>&1 ||
            say "warning: '${compose_cmd[*]} down -v' failed" >&2
    fi
    # Candidate containers a failed run may have left (this smoke's host label only).
    local left
    left=$(docker ps -aq --filter "label=autoresearch.host=$host_name")
    [ -n "$left" ] && docker rm -f $left >/dev/null 2>&1
    if [ "${SMOKE_KEEP:-0}" = 1 ]; then
        say "SMOKE_KEEP=1: kept $work"
    else
        # Files the candidates wrote as uid 1000 may not be ours to remove: a container may.
        rm -rf "$work" 2>/dev/null ||
            docker run --rm --user 0:0 --entrypoint rm -v "$work:/smoke-work" "$app_image" \
                -rf /smoke-work/home /smoke-work/repo >/dev/null 2>&1
        rm -rf "$work" 2>/dev/null || say "warning: could not remove $work" >&2
    fi
    if [ "$rc" -eq 0 ]; then
        say "PASSED in $(($(date +%s) - start_s)) s"
    else
        say "FAILED (exit $rc) after $(($(date +%s) - start_s)) s" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

git clone --quiet "$repo_root" "$clone" || fail "git clone of $repo_root"

# A free loopback port for Redis (the stack publishes it on this host).
redis_port=
for _ in $(seq 1 50); do
    port=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        redis_port=$port
        break
    fi
done
[ -n "$redis_port" ] || fail "no free port for Redis"

docker_gid=$(stat -c %g /var/run/docker.sock 2>/dev/null) || fail "no /var/run/docker.sock"
password=$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')

cat >"$env_file" <<ENV
TAG=$tag
PROFILE=cpu
SOURCE=local
MAX_EXPERIMENTS=2
MAX_HOURS=
PROPOSER=mutate
AUTORESEARCH_HOME=$home
REPO_DIR=$clone
AUTORESEARCH_UID=$(id -u)
AUTORESEARCH_GID=$(id -g)
DOCKER_GID=$docker_gid
GPUS=1
AUTORESEARCH_GPUS=0
AUTORESEARCH_HOST=$host_name
MEMORY_GB=
REDIS_IMAGE=$redis_image
REDIS_PASSWORD=$password
REDIS_BIND=127.0.0.1
REDIS_PORT=$redis_port
OPENAI_API_KEY=
AUTORESEARCH_LLM_BASE_URL=
AUTORESEARCH_LLM_MODEL=
RUNNER_BASE=$runner_base
RUNNER_TORCH_SPEC=$runner_torch_spec
ENV
# Compose prefers the shell's environment over --env-file: make both say the same.
set -a
# shellcheck disable=SC1090
. "$env_file"
set +a

say "tag $tag, home $home, repo $clone, compose: ${compose_cmd[*]}"
compose config -q || fail "'compose config' rejects compose.yaml + docker/smoke.override.yaml"

# --- run ---
up_s=$(date +%s)
compose up -d --no-build || fail "'compose up -d' (prepare or another service failed to start)"

container_of() {
    docker ps -aq --filter "label=com.docker.compose.project=$project" \
        --filter "label=com.docker.compose.service=$1" | head -n 1
}
orch=$(container_of orchestrator)
[ -n "$orch" ] || fail "no orchestrator container after 'up -d'"
say "waiting for the orchestrator to exit (at most $timeout_s s)"
deadline=$(($(date +%s) + timeout_s))
while :; do
    read -r status code restarts < <(docker inspect -f '{{.State.Status}} {{.State.ExitCode}} {{.RestartCount}}' "$orch")
    [ "$status" = exited ] && break
    if [ "$restarts" -gt 0 ]; then
        fail "the orchestrator crashed and was restarted ($restarts times; last exit code $code)"
    fi
    worker=$(container_of worker)
    if [ -n "$worker" ]; then
        wrestarts=$(docker inspect -f '{{.RestartCount}}' "$worker")
        [ "$wrestarts" -gt 0 ] && fail "the worker crashed and was restarted ($wrestarts times)"
    fi
    [ "$(date +%s)" -lt "$deadline" ] || fail "the orchestrator still runs after $timeout_s s"
    sleep 5
done
run_s=$(($(date +%s) - up_s))
say "the orchestrator exited with code $code after $run_s s"
[ "$code" = 0 ] || fail "the orchestrator's exit code is $code, not 0"

# --- checks ---
results=$home/runs/$tag/results.tsv
[ -f "$results" ] || fail "no $results"
say "results.tsv:"
sed 's/^/    /' "$results"
rows=$(($(wc -l <"$results") - 1))
[ "$rows" -eq 3 ] || fail "results.tsv has $rows rows, not 3 (baseline + 2)"
baseline_bpb=$(awk -F'\t' 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == "val_bpb") c = i }
    NR == 2 && c { print $c }' "$results")
[[ "$baseline_bpb" =~ ^[0-9]+(\.[0-9]+)?$ ]] ||
    fail "the baseline row has no val_bpb (got '${baseline_bpb}')"
git -C "$clone" rev-parse --verify --quiet "refs/heads/autoresearch/$tag" >/dev/null ||
    fail "no branch autoresearch/$tag in the clone"
left=$(docker ps -aq --filter label=autoresearch --filter "label=autoresearch.host=$host_name")
[ -z "$left" ] || fail "candidate containers left behind: $(echo $left)"

say "ok: exit code 0, 3 rows, baseline val_bpb $baseline_bpb, branch autoresearch/$tag, no container left"
say "wall time: $run_s s from 'up -d' to the orchestrator's exit, $(($(date +%s) - start_s)) s in all"
