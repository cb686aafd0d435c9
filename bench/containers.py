"""Container overhead per experiment: the docker runner against the process runner.

Runs the same spec (the tests' tiny candidate by default; 10 s train wall, 2 s save
margin, 1 s grace, 30 s eval wall) R times with each runner, interleaved (process, then
docker), on a cpu-profile data folder, and reads from each result the phase wall times
(train_phase_s, eval_phase_s, total_s) and the harness' own timings (startup_s,
training_s, save_s, eval_s). Per runner it prints the mean and min of each column and

    overhead = (train_phase_s - startup_s - training_s - save_s) + (eval_phase_s - eval_s)

the time outside the harness' own measured work (process or container start, stop and
removal). startup_s is shown apart: it holds python's and torch's import, paid by both
runners, and for the docker runner also the train container's creation, which happens
before the phase clock starts. The process runner starts its eval process during
training (the import is then off the critical path); the docker runner does not. The
headline compares mean(total_s - training_s) of the two runners.

It also times the engine's own cost for one bare container (create, start, wait,
remove) running the host python's `-c pass`.

No image is pulled: like tests/test_docker_runner.py, the container image is an empty
imported filesystem and the host's python and system libraries are bind-mounted
read-only at their own paths. Every container it creates is labelled and removed.

    python bench/containers.py [--repeats 5] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import docker  # noqa: E402
from harness.manifest import load_manifest  # noqa: E402
from harness.prepare import prepare  # noqa: E402
from harness.profiles import get_profile  # noqa: E402
from tests.conftest import TINY_TRAIN, write_corpus  # noqa: E402
from worker import contract  # noqa: E402
from worker.docker_runner import LABEL, DockerRunner  # noqa: E402
from worker.process_runner import ProcessRunner  # noqa: E402
from worker.runner import Runner  # noqa: E402

IMAGE = "autoresearch-bench-base:latest"
BUDGET = {"train_wall_s": 10.0, "save_margin_s": 2.0, "return_grace_s": 1.0, "eval_wall_s": 30.0}
HOST_MOUNTS = ("/usr", "/lib", "/lib64", "/bin")
COLUMNS = (
    "total_s",
    "train_phase_s",
    "eval_phase_s",
    "startup_s",
    "training_s",
    "save_s",
    "eval_s",
    "overhead_s",
    "total-training",
)


def host_mounts() -> list[str]:
    """What the host python needs inside an empty image: system libraries and its prefixes."""
    paths = [p for p in HOST_MOUNTS if Path(p).exists()]
    for prefix in (sys.base_prefix, sys.prefix):
        if not any(prefix == p or prefix.startswith(p + "/") for p in paths):
            paths.append(prefix)
    return paths


def empty_image(client: docker.DockerClient) -> str:
    try:
        client.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        buf = io.BytesIO()
        tarfile.open(fileobj=buf, mode="w").close()
        repo, tag = IMAGE.split(":")
        client.api.import_image_from_data(buf.getvalue(), repository=repo, tag=tag)
    return IMAGE


def prepared_data(tmp: Path) -> Path:
    out = tmp / "data" / "cpu"
    prepare(out, get_profile("cpu"), source="local", local_dir=write_corpus(tmp / "corpus"))
    return out


def run_once(runner: Runner, spec: dict, workdir: Path) -> dict[str, float]:
    fields = runner.run(spec, workdir, lambda phase, line: None)
    if fields["status"] != "ok":
        raise SystemExit(
            f"{runner.name} run failed: {fields['status']}: {fields['error']}\n{fields['log_tail']}"
        )
    row = {k: float(fields[k]) for k in COLUMNS[:7]}
    row["overhead_s"] = (
        row["train_phase_s"] - row["startup_s"] - row["training_s"] - row["save_s"]
    ) + (row["eval_phase_s"] - row["eval_s"])
    row["total-training"] = row["total_s"] - row["training_s"]
    return row


def bare_container(client: docker.DockerClient, image: str, labels: dict) -> dict[str, float]:
    """One container through its whole life, each engine call timed."""
    times = {}
    t = time.perf_counter()
    container = client.containers.create(
        image,
        [sys.executable, "-c", "pass"],
        name=f"{LABEL}-bench-{uuid.uuid4().hex[:12]}",
        labels=labels,
        mounts=[docker.types.Mount(p, p, type="bind", read_only=True) for p in host_mounts()],
        network_mode="none",
    )
    times["create"] = time.perf_counter() - t
    try:
        t = time.perf_counter()
        container.start()
        times["start"] = time.perf_counter() - t
        t = time.perf_counter()
        code = container.wait(timeout=30)["StatusCode"]
        times["wait"] = time.perf_counter() - t
        if code != 0:
            raise SystemExit(f"bare container exited {code}: {container.logs().decode()}")
    finally:
        t = time.perf_counter()
        container.remove(force=True)
        times["remove"] = time.perf_counter() - t
    times["all"] = sum(times.values())
    return times


def stat_rows(name: str, rows: list[dict[str, float]], cols) -> list[str]:
    return [
        f"| {name} | {label} | " + " | ".join(f"{fn(r[c] for r in rows):.2f}" for c in cols) + " |"
        for label, fn in (("mean", statistics.mean), ("min", min))
    ]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="a prepared cpu-profile data folder"
    )
    return parser.parse_args()


def bench_spec(data_dir: Path) -> dict:
    """The spec both runners run: the tiny candidate under BUDGET."""
    return contract.make_spec(
        id="bench",
        tag="bench",
        parent="none",
        commit="none",
        source=TINY_TRAIN,
        profile="cpu",
        fingerprint=load_manifest(data_dir)["fingerprint"],
        budget=BUDGET,
        seed=0,
        description="container overhead benchmark",
    )


def make_runners(data_dir: Path, client: docker.DockerClient, image: str) -> list[Runner]:
    """The process runner, then the docker runner on the empty image with the host mounted."""
    return [
        ProcessRunner(data_dir),
        DockerRunner(
            data_dir,
            image=image,
            python=sys.executable,
            extra_mounts=host_mounts(),
            host=f"bench-{uuid.uuid4().hex[:8]}",
            client=client,
        ),
    ]


def run_all(
    runners: list[Runner],
    spec: dict,
    client: docker.DockerClient,
    image: str,
    tmp: Path,
    repeats: int,
) -> tuple[dict[str, list[dict[str, float]]], list[dict[str, float]]]:
    """Each runner ``repeats`` times, interleaved, then as many bare containers.

    Returns the rows per runner name and the bare containers' timings; whatever happens,
    the docker runner's leftover containers are removed.
    """
    docker_runner = runners[1]
    results: dict[str, list[dict[str, float]]] = {r.name: [] for r in runners}
    bare: list[dict[str, float]] = []
    try:
        for i in range(repeats):
            for runner in runners:
                row = run_once(runner, spec, tmp / f"{runner.name}-{i}")
                results[runner.name].append(row)
                print(
                    f"{runner.name} #{i}: total {row['total_s']:.2f} s, "
                    f"overhead {row['overhead_s']:.2f} s",
                    file=sys.stderr,
                )
        for _ in range(repeats):
            bare.append(bare_container(client, image, docker_runner.labels()))
    finally:
        left = docker_runner.cleanup_orphans()
        if left:
            print(f"removed {len(left)} leftover containers", file=sys.stderr)
    return results, bare


def print_table(head: str, names: Sequence[str], groups: dict[str, list[dict[str, float]]]) -> None:
    """A markdown table: the mean and min row of each group, one column per name."""
    print(f"| {head} | stat | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 2) + "|")
    for name, rows in groups.items():
        for line in stat_rows(name, rows, names):
            print(line)


def report(
    results: dict[str, list[dict[str, float]]], bare: list[dict[str, float]], repeats: int
) -> None:
    print(
        f"cpu profile, tiny candidate, {repeats} runs per runner (interleaved), "
        f"budget {BUDGET}; seconds\n"
    )
    print_table("runner", COLUMNS, results)

    steps = ("create", "start", "wait", "remove", "all")
    print(f"\nbare container (`{Path(sys.executable).name} -c pass`), {len(bare)} times; seconds\n")
    print_table("container", steps, {"bare": bare})

    mean = {n: statistics.mean(r["total-training"] for r in rows) for n, rows in results.items()}
    print(
        f"\ndocker adds {mean['docker'] - mean['process']:.2f} s per experiment over the "
        "process runner (target under 2 s)"
    )


def main() -> int:
    args = parse_args()
    client = docker.from_env()
    client.ping()
    image = empty_image(client)
    with tempfile.TemporaryDirectory(prefix="autoresearch-containers-") as tmp_name:
        tmp = Path(tmp_name)
        data_dir = (args.data_dir or prepared_data(tmp)).resolve()
        runners = make_runners(data_dir, client, image)
        results, bare = run_all(runners, bench_spec(data_dir), client, image, tmp, args.repeats)
    report(results, bare, args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
