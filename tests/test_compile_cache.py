"""The compile cache: a candidate trains with its own copy of the frontier's, only kept
candidates' caches are ever given out, and the eval phase never sees one."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from tests.conftest import CACHE_PROBE, SHORT_BUDGET, assert_caches_seen, run_candidate
from worker import compile_cache
from worker.compile_cache import CACHE_DIR, LATEST, CacheStore
from worker.process_runner import ProcessRunner


def compile_into(folder: Path, name: str, text: str = "x") -> None:
    """What a train phase's compile leaves: a file in its cache folder."""
    (folder / "fxgraph").mkdir(parents=True, exist_ok=True)
    (folder / "fxgraph" / name).write_text(text)


def names(folder: Path) -> set[str]:
    return {p.name for p in folder.rglob("*") if p.is_file()}


def job(store: CacheStore, scratch: Path, parent: str, commit: str, writes: str, keep=True):
    """One candidate's cache: given from its parent, compiled into, kept as its commit's."""
    given = store.give(parent, commit, scratch / CACHE_DIR)
    seen = names(scratch / CACHE_DIR)
    compile_into(scratch / CACHE_DIR, writes)
    why = store.keep(commit, scratch / CACHE_DIR) if keep else None
    return given, seen, why


def test_only_kept_candidates_caches_are_given_and_each_gets_a_copy(tmp_path):
    store, scratch = CacheStore(tmp_path / "store"), tmp_path / "scratch"
    given, seen, why = job(store, scratch, "base", "base", "a")  # the baseline: cold
    assert (given.commit, given.mb, seen, why) == ("", 0.0, set(), "")
    assert not (scratch / CACHE_DIR).exists()  # it left the scratch before the eval phase

    # A noise run of the baseline gets its cache; what it writes into its copy stays there.
    given = store.give("base", "base", scratch / CACHE_DIR)
    assert given.commit == "base" and given.mb > 0 and names(scratch / CACHE_DIR) == {"a"}
    (scratch / CACHE_DIR / "fxgraph" / "a").write_text("poisoned")
    assert (store.root / "base" / "fxgraph" / "a").read_text() == "x"
    assert store.keep("base", scratch / CACHE_DIR) == "this commit's cache is kept already"
    assert not (scratch / CACHE_DIR).exists()
    assert (store.root / LATEST).read_text() == "base"  # given as a parent's: a frontier's

    _, seen, _ = job(store, scratch, "base", "cand-b", "b")  # B, never kept
    assert seen == {"a"}
    _, seen, _ = job(store, scratch, "base", "cand-c", "c")  # C sees nothing of B's
    assert seen == {"a"}
    _, seen, _ = job(store, scratch, "cand-c", "cand-d", "d")  # C kept: its cache is the frontier's
    assert seen == {"a", "c"}
    assert (store.root / LATEST).read_text() == "cand-c"
    # A parent this store never kept (another host ran it): the newest frontier's it has.
    given, seen, _ = job(store, scratch, "elsewhere", "cand-e", "e")
    assert given.commit == "cand-c" and seen == {"a", "c"}
    # A repeat of a commit gets its own cache or none, never a later frontier's; a run of no
    # parent (verify, ablate) none at all.
    assert store.give("elsewhere", "elsewhere", scratch / CACHE_DIR).commit == ""
    assert store.give("base", "base", scratch / CACHE_DIR).commit == "base"
    assert store.give("", "cand-c", scratch / CACHE_DIR).commit == ""
    assert names(scratch / CACHE_DIR) == set()


@pytest.mark.parametrize(
    "hostile", ["symlink", "top-symlink", "hardlink", "fifo", "deep", "many", "big"]
)
def test_a_hostile_cache_is_not_kept_and_nothing_outside_is_touched(tmp_path, monkeypatch, hostile):
    """What a candidate may leave in its cache folder to reach another candidate, the
    eval phase or the worker's disk: refused, the folder removed, nothing outside read."""
    monkeypatch.setattr(compile_cache, "MAX_BYTES", 100)
    monkeypatch.setattr(compile_cache, "MAX_FILES", 5)
    monkeypatch.setattr(compile_cache, "MAX_DEPTH", 3)
    store, folder = CacheStore(tmp_path / "store"), tmp_path / "scratch" / CACHE_DIR
    secret = tmp_path / "val"  # what the train phase may not read: the validation split
    secret.mkdir()
    (secret / "val.bin").write_text("targets")
    compile_into(folder, "a")
    if hostile == "symlink":
        (folder / "fxgraph" / "key").symlink_to(secret / "val.bin")
    elif hostile == "top-symlink":
        compile_cache.remove_tree(folder)
        folder.symlink_to(secret)
    elif hostile == "hardlink":  # the eval phase could write through its twin in tmp/
        os.link(folder / "fxgraph" / "a", tmp_path / "scratch" / "twin")
    elif hostile == "fifo":
        os.mkfifo(folder / "fxgraph" / "pipe")
    elif hostile == "deep":
        (folder / "1" / "2" / "3" / "4" / "5").mkdir(parents=True)
    elif hostile == "many":
        for n in range(6):
            compile_into(folder, f"k{n}")
    else:
        compile_into(folder, "big", "y" * 101)
    why = store.keep("c", folder)
    assert why and not (store.root / "c").exists(), why
    assert not folder.exists() and not folder.is_symlink()
    assert (secret / "val.bin").read_text() == "targets"
    assert store.give("c", "c", tmp_path / "next").commit == ""


def test_an_empty_cache_is_not_kept_and_makes_no_store(tmp_path):
    store, folder = CacheStore(tmp_path / "store"), tmp_path / "scratch" / CACHE_DIR
    (folder / "empty-subfolder").mkdir(parents=True)
    assert store.keep("c", folder) == "it is empty (nothing was compiled)"
    assert not folder.exists() and not store.root.exists()


def test_the_newest_frontier_stays_the_newest(tmp_path):
    """A final re-measure of the baseline names it a parent again: the fallback for a
    candidate whose parent this store lacks stays the newest frontier's."""
    store, scratch = CacheStore(tmp_path / "store"), tmp_path / "scratch"
    job(store, scratch, "base", "base", "a")
    job(store, scratch, "base", "c1", "1")
    os.utime(store.root / "base", (0, 0))
    job(store, scratch, "c1", "c2", "2")  # c1 kept
    assert store.give("base", "base", scratch / CACHE_DIR).commit == "base"  # its final run
    assert (store.root / LATEST).read_text() == "c1"
    assert store.give("elsewhere", "c9", scratch / CACHE_DIR).commit == "c1"


def test_old_caches_age_out_but_not_the_frontiers(tmp_path, monkeypatch):
    monkeypatch.setattr(compile_cache, "KEEP", 2)
    store, scratch = CacheStore(tmp_path / "store"), tmp_path / "scratch"
    job(store, scratch, "base", "base", "a")
    job(store, scratch, "base", "c1", "1")  # "base": the first frontier
    for n, commit in enumerate(("c2", "c3", "c4"), start=2):
        job(store, scratch, "c1", commit, commit)  # c1 kept: the newest frontier
        for old, age in (("base", 0), ("c1", 0), (commit, n)):
            os.utime(store.root / old, (age, age))
    kept = {p.name for p in store.root.iterdir() if p.is_dir()}
    assert kept == {"base", "c1", "c3", "c4"}
    assert (store.root / compile_cache.FIRST).read_text() == "base"


def test_another_users_phase_can_write_into_its_copy(tmp_path):
    store, scratch = CacheStore(tmp_path / "store", writable_by_all=True), tmp_path / "s"
    job(store, scratch, "base", "base", "a")
    store.give("base", "c", scratch / CACHE_DIR)
    for path in [scratch / CACHE_DIR, *(scratch / CACHE_DIR).rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o777 if path.is_dir() else 0o666), path
    cold = CacheStore(tmp_path / "empty", writable_by_all=True).give("x", "y", tmp_path / "cold")
    assert cold.commit == "" and stat.S_IMODE((tmp_path / "cold").stat().st_mode) == 0o777


def test_a_runner_gives_the_train_phase_the_copy_and_the_eval_phase_none(data_dir, tmp_path):
    store = CacheStore(tmp_path / "store")
    compile_into(tmp_path / "frontier", "kernel")
    assert store.keep("p", tmp_path / "frontier") == ""  # the frontier ("p", the spec's parent)
    runner = ProcessRunner(data_dir)
    runner.caches = store
    result, lines = run_candidate(runner, tmp_path / "work", CACHE_PROBE, SHORT_BUDGET)
    assert result["status"] == "ok", result["log_tail"]
    assert_caches_seen(lines)
    assert result["cache_mb"] > 0 and 0 <= result["cache_s"] < 5
    # What the train phase compiled is kept under the candidate's commit ("c").
    assert names(store.root / "c") == {"kernel", "compiled-by-0"}


@pytest.mark.parametrize("phase", ["train", "eval"])
def test_each_phase_is_told_its_own_folder(phase):
    env = compile_cache.env("/scratch", phase)
    folder = env["TORCHINDUCTOR_CACHE_DIR"]
    assert env["TRITON_CACHE_DIR"] == f"{folder}/triton"
    assert (folder == f"/scratch/{CACHE_DIR}") == (phase == "train")


def test_the_jobs_of_a_run_share_its_folders_store(data_dir, tmp_path, monkeypatch):
    """The worker's job keeps the candidate's cache in its run folder's store, where the
    next job of that run (this worker or another writing there) finds it as its parent's."""
    from worker import contract, jobs, settings

    monkeypatch.setenv(settings.ENV_DATA_DIR, str(data_dir))
    monkeypatch.setenv(settings.ENV_RUNS_DIR, str(tmp_path / "runs"))
    fingerprint = json.loads((data_dir / "manifest.json").read_text())["fingerprint"]

    def spec(exp_id: str, parent: str, commit: str) -> dict:
        return contract.make_spec(
            id=exp_id,
            tag="r",
            parent=parent,
            commit=commit,
            source=CACHE_PROBE,
            profile="cpu",
            fingerprint=fingerprint,
            budget=SHORT_BUDGET,
            seed=int(exp_id),
            description="probe",
        )

    first = jobs.run_experiment(spec("1", "base", "cand"))
    assert first["status"] == "ok" and first["cache_mb"] == 0.0, first["log_tail"]
    store = tmp_path / "runs" / "r" / compile_cache.STORE_DIR
    assert names(store / "cand") == {"compiled-by-1"}
    second = jobs.run_experiment(spec("2", "cand", "next"))
    assert second["status"] == "ok" and second["cache_mb"] > 0, second["log_tail"]
    assert names(store / "next") == {"compiled-by-1", "compiled-by-2"}
    assert not (tmp_path / "runs" / "r" / "2" / "scratch").exists()
