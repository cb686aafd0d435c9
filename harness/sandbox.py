"""Landlock (Linux 5.13+): let a process read only the paths it needs, for good.

The model server applies it before it imports train.py: from then on the candidate's code
can read the Python installation, the harness, its own train.py and weights, and the
system folders, but not the prepared data (the validation shard the scorer holds), nor
anything else of the host's. Unprivileged, irreversible, inherited by children. Where the
kernel (or a container's seccomp profile) lacks Landlock, `restrict_reads` says so and
the process goes on unrestricted; the caller reports it.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct
from collections.abc import Iterable
from pathlib import Path

# Syscall numbers (the same on x86_64 and aarch64) and flags from linux/landlock.h.
_CREATE_RULESET, _ADD_RULE, _RESTRICT_SELF = 444, 445, 446
_RULE_PATH_BENEATH = 1
_READ_FILE, _READ_DIR = 1 << 2, 1 << 3
_PR_SET_NO_NEW_PRIVS = 38
# Folders every process needs to read: the system's libraries and devices.
SYSTEM_PATHS = ("/usr", "/lib", "/lib64", "/etc", "/dev", "/proc", "/sys", "/opt/conda")


class LandlockUnavailable(OSError):
    """The kernel or the container does not offer Landlock."""


def _libc():
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "aarch64"):
        raise LandlockUnavailable(f"no Landlock on {platform.system()} {platform.machine()}")
    return ctypes.CDLL(None, use_errno=True)


def _check(value: int, what: str) -> int:
    if value < 0:
        err = ctypes.get_errno()
        raise LandlockUnavailable(f"{what}: {os.strerror(err)}")
    return value


def restrict_reads(paths: Iterable[str | Path]) -> int:
    """Allow reading only under `paths` (and SYSTEM_PATHS) from now on; returns the ABI."""
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    n = ctypes.c_long
    abi = _check(libc.syscall(n(_CREATE_RULESET), None, n(0), n(1)), "landlock abi")
    attr = ctypes.create_string_buffer(struct.pack("=Q", _READ_FILE | _READ_DIR), 8)
    ruleset = _check(libc.syscall(n(_CREATE_RULESET), attr, n(8), n(0)), "landlock ruleset")
    try:
        for path in {*SYSTEM_PATHS, *map(str, paths)}:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue  # not on this system
            try:
                access = _READ_FILE | _READ_DIR if os.path.isdir(path) else _READ_FILE
                rule = ctypes.create_string_buffer(struct.pack("=Qi", access, fd), 12)
                _check(
                    libc.syscall(n(_ADD_RULE), n(ruleset), n(_RULE_PATH_BENEATH), rule, n(0)), path
                )
            finally:
                os.close(fd)
        _check(libc.prctl(n(_PR_SET_NO_NEW_PRIVS), n(1), n(0), n(0), n(0)), "no_new_privs")
        _check(libc.syscall(n(_RESTRICT_SELF), n(ruleset), n(0)), "landlock restrict")
    finally:
        os.close(ruleset)
    return abi


def python_paths() -> set[str]:
    """Where this interpreter reads its modules and libraries from."""
    import site
    import sys
    import sysconfig

    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    paths.update(v for k, v in sysconfig.get_paths().items() if k != "scripts")
    paths.update(site.getsitepackages())
    return {p for p in paths if p and os.path.exists(p)}
