"""The prepared data's manifest and fingerprint.

Torch-free: the orchestrator reads the fingerprint to stamp every job, and a worker whose
fingerprint differs refuses the job, so results from different data never compete.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
# Layout under a prepared data folder; train/ and val/ are separate so a runner can
# mount (or expose) one without the other.
TOKENIZER_DIR = "tokenizer"
TRAIN_DIR = "train"
VAL_DIR = "val"


class DataNotPrepared(FileNotFoundError):
    """The data folder has no manifest: run `autoresearch prepare` first."""


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


def harness_digest(root: Path | None = None) -> str:
    """sha256 over the harness's own source files (names and contents, sorted): the
    scorer stamps its result with it and the orchestrator refuses one that differs from
    its own, so every compared score came from the same evaluation code."""
    folder = Path(root) if root else Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()
