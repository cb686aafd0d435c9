#!/usr/bin/env bash
# `make compose-smoke`: the whole compose stack on one machine without a GPU, checked end to end.
#
# Three compose projects on this machine, with nothing set but what a CPU smoke test needs
# (PROFILE=cpu SOURCE=local PROPOSER=mutate MAX_EXPERIMENTS, and folders and ports of its own):
#   a  the run: compose.yaml + docker/publish-redis.yaml, `up --scale worker=3`;
#   b  another host's stand-in: compose.yaml + docker/join.yaml, its own data folder and
#      host name, joining a's Redis through host.docker.internal;
#   c  like b, but its data is another profile's (gpu): its worker must refuse a's jobs.
# b's and c's workers are up before a's loop starts. Checks, after a's orchestrator exits:
#   - exit code 0; results.tsv has the baseline and at least 2 experiments;
#   - the branch autoresearch/main holds exactly the kept rows' commits, in order;
#   - the workers' own logs (`docker compose logs worker`) carry each experiment's start,
#     progress (step, loss) and end (status, val_bpb) with its id;
#   - each of a's 3 workers and b's worker ran an experiment; c's logged one refusal line
#     and ran none;
#   - `docker compose exec orchestrator autoresearch status` answered during the run, and so
#     did the dashboard on its port;
#   - after `down`, no candidate container is left.
# It always tears the projects down (down -v) and removes its temporary folders.
#
# Settings (environment):
#   SMOKE_LOCAL_BASE=1  build every image from a local Debian base (docker/base.sh), pulling
#                       from no registry: the host's CA bundle (PIP_CERT, SSL_CERT_FILE or
#                       REQUESTS_CA_BUNDLE, if set) goes to docker/certs/, and the CPU torch
#                       wheel of the project's venv to docker/wheels/ (this is what CI runs)
#   SMOKE_SKIP_BUILD=1  reuse autoresearch-app:latest and autoresearch-runner:latest
#   APP_BASE, RUNNER_BASE, RUNNER_TORCH_SPEC, REDIS_IMAGE   as in .env.example
#   SMOKE_EXPERIMENTS   MAX_EXPERIMENTS of the run (default 6)
#   SMOKE_TIMEOUT_S     how long to wait for the orchestrator (default 900)
#   SMOKE_KEEP=1        keep the temporary folders
#   COMPOSE             the compose command (default: `docker compose`, else `docker-compose`)
set -euo pipefail

cd "$(dirname "$0")/.."
repo_root=$(pwd)
start_s=$(date +%s)
timeout_s=${SMOKE_TIMEOUT_S:-900}
experiments=${SMOKE_EXPERIMENTS:-6}
app_image=autoresearch-app:latest
runner_image=autoresearch-runner:latest

say() { printf 'smoke: %s\n' "$*"; }
failure=
fail() {
    failure=$*
    printf '\nsmoke: FAILED: %s\n' "$*" >&2
    exit 1
}
took() { echo "$(($(date +%s) - $1)) s"; }

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
command -v python3 >/dev/null || fail "python3 is needed for the checks"

# --- images ---
build_s=$(date +%s)
if [ "${SMOKE_LOCAL_BASE:-0}" = 1 ]; then
    bash docker/base.sh || fail "docker/base.sh (the local Debian base)"
    APP_BASE=${APP_BASE:-autoresearch-debian:bookworm}
    RUNNER_BASE=${RUNNER_BASE:-autoresearch-debian:bookworm}
    REDIS_IMAGE=${REDIS_IMAGE:-autoresearch-redis:local}
    for bundle in "${PIP_CERT:-}" "${SSL_CERT_FILE:-}" "${REQUESTS_CA_BUNDLE:-}"; do
        if [ -n "$bundle" ] && [ -f "$bundle" ]; then
            cp "$bundle" docker/certs/host.crt
            say "the host's CA bundle ($bundle) goes into the images: docker/certs/host.crt"
            break
        fi
    done
    if [ -z "${RUNNER_TORCH_SPEC:-}" ]; then
        torch_version=$(.venv/bin/python -c 'import torch; print(torch.__version__)') ||
            fail "no torch in .venv (make install first)"
        # The package index names a build by its public version alone (PyPI's CUDA build of
        # 2.14.1 reports itself as 2.14.1+cu130); `==2.14.1` also matches a local build such
        # as 2.13.0+cpu's wheel, which pip prefers to the public one of its version.
        public_version=${torch_version%%+*}
        if ! ls docker/wheels/torch-"${torch_version/+/%2B}"-*.whl docker/wheels/torch-"$torch_version"-*.whl \
            docker/wheels/torch-"$public_version"-*.whl >/dev/null 2>&1; then
            .venv/bin/pip download -q --no-deps --only-binary=:all: -d docker/wheels "torch==$torch_version" ||
                .venv/bin/pip download -q --no-deps --only-binary=:all: -d docker/wheels "torch==$public_version" ||
                .venv/bin/pip download -q --no-deps --only-binary=:all: -d docker/wheels \
                    --extra-index-url https://download.pytorch.org/whl/cpu "torch==$torch_version" ||
                fail "pip download torch==$torch_version"
        fi
        RUNNER_TORCH_SPEC="torch==$public_version"
    fi
fi
if [ "${SMOKE_SKIP_BUILD:-0}" = 1 ]; then
    say "SMOKE_SKIP_BUILD=1: reusing $app_image and $runner_image"
else
    app_args=()
    [ -n "${APP_BASE:-}" ] && app_args+=(--build-arg "BASE=$APP_BASE")
    runner_args=(--build-arg "TORCH_SPEC=${RUNNER_TORCH_SPEC:-}")
    [ -n "${RUNNER_BASE:-}" ] && runner_args+=(--build-arg "BASE=$RUNNER_BASE")
    say "building $app_image${APP_BASE:+ on $APP_BASE}"
    docker build -q -f docker/app.Dockerfile "${app_args[@]}" -t "$app_image" . >/dev/null ||
        fail "building $app_image"
    say "building $runner_image${RUNNER_BASE:+ on $RUNNER_BASE}${RUNNER_TORCH_SPEC:+ (torch: $RUNNER_TORCH_SPEC)}"
    docker build -q -f docker/runner.Dockerfile "${runner_args[@]}" -t "$runner_image" . >/dev/null ||
        fail "building $runner_image"
fi
for image in "$app_image" "$runner_image"; do
    docker image inspect "$image" >/dev/null 2>&1 || fail "image $image not found"
done
build_took=$(($(date +%s) - build_s))
say "images ready in $build_took s"

# --- folders, ports, the projects ---
work=$(mktemp -d "${TMPDIR:-/tmp}/autoresearch-smoke.XXXXXX")
chmod 0755 "$work"
clone=$work/repo
git clone --quiet "$repo_root" "$clone" || fail "git clone of $repo_root"
if [ "$(id -u)" = 0 ]; then
    # As root, the repo of a user: the services must drop to its owner (docker/entrypoint.sh).
    chown -R 1000:1000 "$clone"
fi
git_() { git -c safe.directory='*' -C "$clone" "$@"; }
start_commit=$(git_ rev-parse HEAD)

free_port() {
    local port
    for _ in $(seq 1 100); do
        port=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return
        fi
    done
    fail "no free port"
}
redis_port=$(free_port)
dashboard_port=$(free_port)
password=$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')
engine_host=$(docker info -f '{{.Name}}')

common=(PROFILE=cpu SOURCE=local REPO_DIR="$clone" REDIS_PASSWORD="$password"
    REDIS_PORT="$redis_port" ${REDIS_IMAGE:+REDIS_IMAGE="$REDIS_IMAGE"})
compose_in() { # project, files..., --, compose arguments
    local project=$1 files=() vars
    shift
    while [ "$1" != -- ]; do
        files+=(-f "$1")
        shift
    done
    shift
    case $project in
    a) vars=(AUTORESEARCH_HOME="$work/a" PROPOSER=mutate MAX_EXPERIMENTS="$experiments"
        DASHBOARD_PORT="$dashboard_port") ;;
    b) vars=(AUTORESEARCH_HOME="$work/b" AUTORESEARCH_HOST=smoke-b REDIS_HOST=host.docker.internal) ;;
    c) vars=(AUTORESEARCH_HOME="$work/c" AUTORESEARCH_HOST=smoke-c REDIS_HOST=host.docker.internal
        PROFILE=gpu GPUS=0) ;;
    esac
    env "${common[@]}" "${vars[@]}" "${compose_cmd[@]}" -p "autoresearch-smoke-$project" \
        --project-directory "$repo_root" "${files[@]}" "$@"
}
a() { compose_in a compose.yaml docker/publish-redis.yaml -- "$@"; }
b() { compose_in b compose.yaml docker/join.yaml -- "$@"; }
c() { compose_in c compose.yaml docker/join.yaml -- "$@"; }

cleanup() {
    local rc=$?
    set +e
    if [ "$rc" -ne 0 ]; then
        # The reason comes last, under a's orchestrator: a CI page often shows only the end.
        for p in c b a; do
            say "--- project $p: service logs (last 40 lines each) ---" >&2
            "$p" logs --no-color --tail 40 >&2 2>&1
        done
        say "--- project a: the orchestrator (last 15 lines) ---" >&2
        a logs --no-color --tail 15 orchestrator >&2 2>&1
        [ -z "$failure" ] || say "the failure: $failure" >&2
    fi
    for p in a b c; do
        "$p" down -v --remove-orphans --timeout 30 >/dev/null 2>&1 ||
            say "warning: project $p: down -v failed" >&2
    done
    for host in "$engine_host" smoke-b smoke-c; do
        left=$(docker ps -aq --filter label=autoresearch.host="$host")
        [ -n "$left" ] && docker rm -f $left >/dev/null 2>&1
    done
    if [ "${SMOKE_KEEP:-0}" = 1 ]; then
        say "SMOKE_KEEP=1: kept $work"
    else
        rm -rf "$work" || say "warning: could not remove $work" >&2
    fi
    if [ "$rc" -eq 0 ]; then
        say "PASSED in $(took "$start_s")"
    else
        say "FAILED (exit $rc) after $(took "$start_s")" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

container_of() { # project, service
    docker ps -aq --filter "label=com.docker.compose.project=autoresearch-smoke-$1" \
        --filter "label=com.docker.compose.service=$2"
}
wait_for() { # seconds, what, command...
    local deadline=$(($(date +%s) + $1)) what=$2
    shift 2
    until "$@"; do
        [ "$(date +%s)" -lt "$deadline" ] || fail "waited $what for too long"
        sleep 2
    done
}
logged() { # project, service, text
    "$1" logs --no-color "$2" 2>/dev/null | grep -q -- "$3"
}

a config -q || fail "compose config (a) rejects compose.yaml + docker/publish-redis.yaml"
say "work folder $work, compose: ${compose_cmd[*]}, engine host $engine_host"

# --- up: a's Redis, then b's and c's workers, then a's loop and workers ---
up_s=$(date +%s)
a up -d --no-build redis || fail "a: up redis"
b up -d --no-build worker || fail "b: up worker"
c up -d --no-build worker || fail "c: up worker"
wait_for 300 "for b's worker" logged b worker '"worker.start"'
wait_for 300 "for c's worker" logged c worker '"worker.start"'
say "b's and c's workers joined in $(took "$up_s")"
a up -d --no-build --scale worker=3 || fail "a: up --scale worker=3"
orch=$(container_of a orchestrator)
[ -n "$orch" ] || fail "no orchestrator container after 'up -d'"

# --- during the run: status through exec, the dashboard ---
results=$work/a/runs/main/results.tsv
has_rows() { [ -f "$results" ] && [ "$(wc -l <"$results")" -ge 2 ]; }
wait_for "$timeout_s" "for the baseline's row" has_rows
status_out=$(a exec -T orchestrator autoresearch status 2>&1) ||
    fail "docker compose exec orchestrator autoresearch status: $status_out"
say "status through exec:"
printf '%s\n' "$status_out" | sed 's/^/    /'
dashboard_code=$(python3 -c "import urllib.request as u; print(u.urlopen('http://127.0.0.1:$dashboard_port/', timeout=10).status)") ||
    fail "the dashboard does not answer on 127.0.0.1:$dashboard_port"
say "dashboard on 127.0.0.1:$dashboard_port: HTTP $dashboard_code"

say "waiting for the orchestrator to exit (at most $timeout_s s)"
deadline=$(($(date +%s) + timeout_s))
while :; do
    read -r state code restarts < <(docker inspect -f '{{.State.Status}} {{.State.ExitCode}} {{.RestartCount}}' "$orch")
    [ "$state" = exited ] && break
    [ "$restarts" -eq 0 ] || fail "the orchestrator crashed and was restarted ($restarts times; last exit $code)"
    [ "$(date +%s)" -lt "$deadline" ] || fail "the orchestrator still runs after $timeout_s s"
    sleep 3
done
run_s=$(($(date +%s) - up_s))
say "the orchestrator exited with code $code, $run_s s after the first 'up'"
[ "$code" = 0 ] || fail "the orchestrator's exit code is $code, not 0"
say "results.tsv:"
sed 's/^/    /' "$results"

# --- checks ---
a logs --no-color worker >"$work/a-worker.log" 2>&1
b logs --no-color worker >"$work/b-worker.log" 2>&1
c logs --no-color worker >"$work/c-worker.log" 2>&1
git_ rev-list --reverse "$start_commit..autoresearch/main" >"$work/branch.txt" ||
    fail "no branch autoresearch/main"
python3 - "$results" "$work" "$experiments" <<'PY' || fail "checks (above)"
import csv, json, sys
from pathlib import Path

results, work, experiments = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
rows = list(csv.DictReader(results.open(), delimiter="\t"))
bad = []
ran = [r for r in rows if r["status"] not in ("noise", "confirm")]
if ran[0]["description"] != "baseline" or len(ran) < 3:
    bad.append(f"want the baseline and at least 2 experiments, got {[r['id'] for r in ran]}")
# The keeps after the baseline's (a baseline that failed once is run again, and its keep
# row comes later).
kept = [r["commit"] for r in ran if r["status"] == "keep" and r["commit"] != ran[0]["commit"]]
branch = (work / "branch.txt").read_text().split()  # the commits after the clone's HEAD
if [c[:7] for c in branch] != [k[:7] for k in kept]:
    bad.append(f"branch {branch} is not the kept commits {kept}")

def events(name):
    out = []
    for line in (work / name).read_text().splitlines():
        brace = line.find("{")
        if brace >= 0:
            try:
                out.append(json.loads(line[brace:]))
            except json.JSONDecodeError:
                pass
    return out

a, b, c = events("a-worker.log"), events("b-worker.log"), events("c-worker.log")
for r in rows:
    mine = [e for e in a + b if e.get("id") == r["id"] and e.get("tag") == "main"]
    kinds = {e.get("event") for e in mine}
    if not {"experiment.start", "experiment.end"} <= kinds:
        bad.append(f"{r['id']}: the workers' logs lack its start/end: {sorted(kinds)}")
    if not any(e["event"] == "experiment.progress" and "step" in e and "loss" in e for e in mine):
        bad.append(f"{r['id']}: no progress line with step and loss")
    end = [e for e in mine if e.get("event") == "experiment.end"]
    if end and not ("status" in end[-1] and "val_bpb" in end[-1]):
        bad.append(f"{r['id']}: its end line lacks status or val_bpb: {end[-1]}")
names = {e["name"]: e["host"] for e in a + b if e.get("event") == "worker.start"}
ran_on = {e.get("worker") for e in a + b if e.get("event") == "experiment.start"}
a_names = [n for n, h in names.items() if h != "smoke-b"]
b_names = [n for n, h in names.items() if h == "smoke-b"]
if len(a_names) != 3 or len(b_names) != 1:
    bad.append(f"want 3 workers on a and 1 on b, got {names}")
for n in a_names + b_names:
    if n not in ran_on:
        bad.append(f"worker {n} ran no experiment")
refusals = [e for e in c if e.get("event") == "worker.refused"]
if len(refusals) != 1 or any(e.get("event") == "experiment.start" for e in c):
    bad.append(f"c's worker: want one refusal line and no experiment, got {len(refusals)}")
for m in bad:
    print(f"smoke: check failed: {m}")
if bad:
    sys.exit(1)
starts = [e.get("worker") for e in a + b if e.get("event") == "experiment.start"]
print(f"smoke: ok: baseline + {len(ran) - 1} experiments + {len(rows) - len(ran)} repeat runs")
print("smoke: runs per worker: " + ", ".join(f"{n}: {starts.count(n)}" for n in a_names + b_names))
print(f"smoke: c's one refusal: {refusals[0]['why']}")
PY

down_s=$(date +%s)
for p in a b c; do
    "$p" down -v --remove-orphans --timeout 30 >/dev/null 2>&1 || fail "project $p: down -v"
done
left=
for host in "$engine_host" smoke-b smoke-c; do
    left+=$(docker ps -a --filter label=autoresearch.host="$host" \
        --format ' {{.Names}} (worker {{.Label "autoresearch.worker"}}, {{.Status}})')
done
[ -z "$left" ] || fail "candidate containers left behind:$left"
say "ok: down in $(took "$down_s"), no candidate container left"
say "wall time: images $build_took s, run $run_s s (first 'up' to the orchestrator's exit), $(took "$start_s") in all"
