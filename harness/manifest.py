"""The prepared data's manifest and fingerprint.

Torch-free: the orchestrator reads the fingerprint to stamp every job, and a worker whose
fingerprint differs refuses the job, so results from different data never compete.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

MANIFEST = "manifest.json"
MANIFEST_VERSION = 3  # 2: the token byte-length table has a checksum; 3: a test split
# Layout under a prepared data folder; train/, val/ and test/ are separate so a runner can
# mount (or expose) one without the others.
TOKENIZER_DIR = "tokenizer"
TRAIN_DIR = "train"
VAL_DIR = "val"
TEST_DIR = "test"  # the held-out test split: only a spec with test_split reaches it


class DataNotPrepared(FileNotFoundError):
    """The data folder has no manifest: run `autoresearch prepare` first."""


class NoTestSplit(ValueError):
    """The data was prepared before test splits existed: prepare again to score one."""


class DataTampered(ValueError):
    """A file the scorer reads differs from the manifest's checksum (or the manifest from
    its fingerprint)."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(manifest: dict) -> str:
    """Hash of what decides a score: the profile, the tokenizer and every shard's checksum."""
    material = {
        "profile": manifest["profile"],
        "tokenizer": manifest["tokenizer"]["sha256"],
        "train": [s["sha256"] for s in manifest["train"]],
        "val": manifest["val"]["sha256"],
    }
    if "token_bytes_sha256" in manifest["tokenizer"]:  # version 2 on
        material["token_bytes"] = manifest["tokenizer"]["token_bytes_sha256"]
    if "test" in manifest:  # version 3 on; an older manifest keeps its fingerprint
        material["test"] = manifest["test"]["sha256"]
    blob = json.dumps(material, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def load_manifest(data_dir: Path) -> dict:
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        raise DataNotPrepared(f"no {MANIFEST} in {data_dir}: run `autoresearch prepare` first")
    return json.loads(path.read_text())


def write_manifest(data_dir: Path, manifest: dict) -> None:
    manifest = {**manifest, "version": MANIFEST_VERSION}
    manifest["fingerprint"] = fingerprint(manifest)
    tmp = Path(data_dir) / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    tmp.replace(Path(data_dir) / MANIFEST)


def test_split(manifest: dict, data_dir: Path | str = "") -> dict:
    """The manifest's test split record, or NoTestSplit saying in one line what to do."""
    if "test" not in manifest:
        where = f" in {data_dir}" if str(data_dir) else ""
        raise NoTestSplit(
            f"the data{where} was prepared without a test split: "
            "run `autoresearch prepare` again to score one"
        )
    return manifest["test"]


def verify_data(data_dir: Path, manifest: dict, test: bool = False) -> None:
    """What the scorer reads, checked from outside the cage: the manifest against its own
    fingerprint, then the validation shard (and, with test, the test split), the tokenizer
    and the token byte-length table against the manifest's checksums. DataTampered names
    the first file that differs; NoTestSplit when test is asked of older data."""
    if fingerprint(manifest) != manifest.get("fingerprint"):
        raise DataTampered(f"{MANIFEST} no longer matches its fingerprint")
    tok = manifest["tokenizer"]
    if "token_bytes_sha256" not in tok:
        raise DataTampered(f"{MANIFEST} predates checksums of {tok['token_bytes']}: prepare again")
    checks = [
        (manifest["val"]["file"], manifest["val"]["sha256"]),
        (tok["file"], tok["sha256"]),
        (tok["token_bytes"], tok["token_bytes_sha256"]),
    ]
    if test:
        split = test_split(manifest, data_dir)
        checks.insert(1, (split["file"], split["sha256"]))
    for name, want in checks:
        path = Path(data_dir) / name
        if not path.is_file() or sha256_file(path) != want:
            raise DataTampered(f"{name} differs from its checksum in {MANIFEST}")


def harness_files(root: Path | None = None) -> dict[str, str]:
    """sha256 of every file in the harness folder but `__pycache__` (which the harness
    never loads: harness/boot.py): a planted module or extension counts."""
    folder = Path(root) if root else Path(__file__).resolve().parent
    return {
        path.relative_to(folder).as_posix(): sha256_file(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and "__pycache__" not in path.relative_to(folder).parts
    }


def harness_digest(root: Path | None = None) -> str:
    """One sha256 over harness_files (names and checksums): the worker stamps each result
    with it and the orchestrator refuses one that differs from its own, so every compared
    score came from the same evaluation code."""
    return files_digest(harness_files(root))


def files_digest(files: dict[str, str]) -> str:
    blob = "".join(f"{name}\0{sha}\0" for name, sha in sorted(files.items()))
    return hashlib.sha256(blob.encode()).hexdigest()
