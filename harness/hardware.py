"""The hardware signature: what this process trains on, as one short line.

    NVIDIA H200 | driver 550.54.15 | cuda 12.4 | torch 2.5.1+cu124
    cpu AMD EPYC 7B13 x2 threads | torch 2.13.0+cpu

The budget is wall-clock: a candidate trains for a fixed number of seconds, not tokens, so
the same train.py trains more tokens, and scores better, on a faster machine. A run
therefore compares only results of one signature (its baseline's), and a worker whose own
signature differs leaves that run's jobs to others (worker/serving.py). Each part is
something that moves the tokens trained in the budget, or the numbers themselves:

- the accelerator's model (its FLOP/s, memory and bandwidth); on the CPU, the CPU's model
  and the threads torch computes with (one CPU with 2 or with 16 threads is not one speed);
- the NVIDIA driver and the CUDA (or ROCm) version torch was built for: their kernels and
  libraries are part of every step's time;
- torch's version: its kernels, its compiler and its defaults change speed and, at the
  margin, results.

The docker runner appends its image id (worker/docker_runner.py): what else the phase ran with.

Deterministic for one machine: nothing that moves between calls (clocks, free memory,
temperatures, the process id) is in it. Torch is imported only when a signature is asked
for, and nothing of the harness is imported: the worker runs this file's source as the
docker runner's probe (worker/engine.py). `python -m harness.hardware [--gpu N]` prints the
signature of the device a phase would use (the process runner's probe).
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
from typing import Any

NVIDIA_VERSION = "/proc/driver/nvidia/version"
_DRIVER = re.compile(r"Kernel Module(?:\s+for\s+\S+)?\s+([0-9][0-9.]*)")


def signature(device: Any = None) -> str:
    """The signature of `device` (a torch.device or its name); None: the device a phase
    uses, CUDA's first when there is one, else the CPU."""
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        parts = [_clean(torch.cuda.get_device_name(device))]
        if driver := nvidia_driver():
            parts.append(f"driver {driver}")
        if torch.version.cuda:
            parts.append(f"cuda {torch.version.cuda}")
        elif getattr(torch.version, "hip", None):
            parts.append(f"rocm {torch.version.hip}")
    elif device.type == "cpu":
        parts = [f"cpu {cpu_model()} x{torch.get_num_threads()} threads"]
    else:  # mps and the like: the chip is the CPU's
        parts = [f"{device.type} {cpu_model()}"]
    return " | ".join([*parts, f"torch {torch.__version__}"])


def nvidia_driver() -> str | None:
    """The NVIDIA kernel driver's version, where the driver says it (Linux), else None."""
    try:
        with open(NVIDIA_VERSION, encoding="utf-8", errors="replace") as fh:
            match = _DRIVER.search(fh.readline())
    except OSError:
        return None
    return match.group(1) if match else None


def cpu_model() -> str:
    """The CPU's model name: /proc/cpuinfo's, else the platform's."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return _clean(value)
    except OSError:
        pass
    if sys.platform == "darwin":
        try:
            out = subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"],
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        if out.strip():
            return _clean(out)
    return _clean(platform.processor() or platform.machine() or "unknown")


def probe() -> dict[str, Any]:
    """What a probe container reports: how many CUDA devices it sees and the signature of
    each (of its CPU when it sees none)."""
    import torch

    count = torch.cuda.device_count()
    found = [signature(f"cuda:{i}") for i in range(count)] or [signature("cpu")]
    return {"gpus": count, "signatures": found}


def _clean(text: str) -> str:
    """One line, single spaces, no `|` (the parts' separator)."""
    return " ".join(text.replace("|", "/").split())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.hardware", description=__doc__)
    parser.add_argument(
        "--gpu", type=int, help="CUDA device N (default: CUDA's first if any, else the CPU)"
    )
    parser.add_argument(
        "--all",
        action="store_true",
        help="one JSON line: the CUDA devices seen and each one's signature (the docker probe)",
    )
    args = parser.parse_args(argv)
    if args.gpu is not None:
        import torch

        seen = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not 0 <= args.gpu < seen:
            parser.error(f"--gpu {args.gpu}: this process sees {seen} CUDA device(s)")
    if args.all:
        print(json.dumps(probe()), flush=True)
    else:
        print(signature(None if args.gpu is None else f"cuda:{args.gpu}"), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
