"""The cage of a process runner's phase (Linux): Landlock for files, seccomp for the network.

Applied by `harness/boot.py` before anything of the phase is imported, so the candidate's
code starts inside it, and inherited by every child (irreversible, unprivileged):

- files (Landlock): read only under the policy's `read` paths and the system's folders;
  write, create, remove, rename or truncate only under its `write` paths (the experiment's
  scratch) and a few device files (/dev/null, the GPU's). The repository (`.git`
  included), the harness, the data, the runs folder, the interpreter and site-packages, the
  user's home: read-only where readable at all. A model server narrows reads further.
- network (seccomp, with Landlock's TCP rules where the ABI has them): no socket but
  AF_UNIX, and no connect/bind/listen/accept at all, so not even a named Unix socket (a
  Docker or Redis socket) can be reached; io_uring (which could open sockets past the
  filter) and ptrace are refused.
- scoping (Landlock ABI 6+): no signal to, and no abstract socket of, a process outside.

The seccomp filter is built with `pyseccomp` (libseccomp, present on every distribution that
ships apt or systemd). `probe()` says, without confining anything, whether this kernel can
hold the full cage; a runner asks it once and records `process-weak` where it cannot.
"""

from __future__ import annotations

import ctypes
import errno
import glob
import os
import platform
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

# Syscall numbers (the same on x86_64 and aarch64) and flags from linux/landlock.h.
_CREATE_RULESET, _ADD_RULE, _RESTRICT_SELF = 444, 445, 446
_VERSION = 1 << 0
_RULE_PATH_BENEATH = 1
WRITE_FILE, READ_FILE, READ_DIR = 1 << 1, 1 << 2, 1 << 3  # execution is not restricted
_DIR_CHANGES = sum(1 << i for i in range(4, 13))  # remove dir/file, make char..sym
REFER, TRUNCATE = 1 << 13, 1 << 14  # ABI 2, ABI 3
_NET_TCP = (1 << 0) | (1 << 1)  # bind, connect (ABI 4)
_SCOPE = (1 << 0) | (1 << 1)  # abstract unix sockets, signals (ABI 6)
_PR_SET_NO_NEW_PRIVS = 38
# The oldest ABI that holds the cage: ABI 3 is the first to control truncate(2).
MIN_ABI = 3
# Folders every process needs to read: the system's libraries, configuration and devices.
SYSTEM_PATHS = ("/usr", "/lib", "/lib64", "/bin", "/sbin", "/etc", "/dev", "/proc", "/sys")
SYSTEM_PATHS += ("/opt/conda",)
# Device files a phase may open for writing: the null devices and the GPU's.
DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty")
GPU_DEVICES = ("/dev/nvidia*", "/dev/nvidia-caps/*", "/dev/dri/*", "/dev/kfd")
# Socket syscalls refused outright (creating an AF_UNIX socket or pair stays allowed).
DENIED_SYSCALLS = ("connect", "bind", "listen", "accept", "accept4", "io_uring_setup", "ptrace")


class CageUnavailable(OSError):
    """The kernel, the container or the system cannot hold (part of) the cage."""


@dataclass
class Policy:
    """What a confined process may read and write (absolute paths)."""

    read: list[str] = field(default_factory=list)
    write: list[str] = field(default_factory=list)
    network: bool = False  # False: the seccomp filter and Landlock's TCP rules

    def to_dict(self) -> dict:
        return {"read": self.read, "write": self.write, "network": self.network}

    @classmethod
    def from_dict(cls, data: dict) -> Policy:
        return cls(list(data["read"]), list(data["write"]), bool(data["network"]))


def _libc():
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "aarch64"):
        raise CageUnavailable(f"no Landlock on {platform.system()} {platform.machine()}")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def _check(value: int, what: str) -> int:
    if value < 0:
        raise CageUnavailable(f"{what}: {os.strerror(ctypes.get_errno())}")
    return value


def landlock_abi() -> int:
    """The kernel's Landlock ABI version (CageUnavailable where there is none)."""
    n = ctypes.c_long
    return _check(_libc().syscall(n(_CREATE_RULESET), None, n(0), n(_VERSION)), "landlock abi")


def _seccomp():
    try:
        import pyseccomp
    except (ImportError, RuntimeError, OSError) as exc:  # no libseccomp on this system
        raise CageUnavailable(f"seccomp: {exc}") from None
    return pyseccomp


def probe() -> tuple[bool, str]:
    """(True, what holds) where this host can hold the whole cage; else (False, why not)."""
    try:
        abi = landlock_abi()
        _seccomp()
    except CageUnavailable as exc:
        return False, str(exc)
    if abi < MIN_ABI:
        return False, f"Landlock ABI {abi} < {MIN_ABI} (no control of truncate)"
    scoped = "signals and abstract sockets scoped" if abi >= 6 else "no signal scoping"
    return True, f"Landlock ABI {abi}, seccomp network filter, {scoped}"


def restrict_files(read: Iterable[str], write: Iterable[str], network: bool = True) -> int:
    """Landlock: from now on read only under `read` (and SYSTEM_PATHS), change files only
    under `write` (and DEVICES); with network=False no TCP either (ABI 4+). Returns the ABI."""
    libc, n = _libc(), ctypes.c_long
    abi = landlock_abi()
    reads = READ_FILE | READ_DIR
    changes = WRITE_FILE | _DIR_CHANGES | (REFER if abi >= 2 else 0)
    changes |= TRUNCATE if abi >= 3 else 0
    attr = struct.pack("=Q", reads | changes)
    if abi >= 4:
        attr += struct.pack("=Q", 0 if network else _NET_TCP)
    if abi >= 6:
        attr += struct.pack("=Q", _SCOPE)
    buf = ctypes.create_string_buffer(attr, len(attr))
    ruleset = _check(libc.syscall(n(_CREATE_RULESET), buf, n(len(attr)), n(0)), "landlock")
    file_rights = READ_FILE | WRITE_FILE | (TRUNCATE if abi >= 3 else 0)
    devices = [p for pattern in (*DEVICES, *GPU_DEVICES) for p in glob.glob(pattern)]
    try:
        rules = [(p, reads) for p in {*SYSTEM_PATHS, *map(str, read)}]
        rules += [(p, reads | changes) for p in map(str, write)]
        rules += [(p, file_rights) for p in devices]
        for path, access in rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue  # not on this system
            try:
                if not os.path.isdir(path):
                    access &= file_rights
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


def deny_network() -> None:
    """seccomp: no socket but AF_UNIX, no connect/bind/listen/accept, no io_uring, no
    ptrace (each refused with an error, not a kill, so a library sees a plain OSError)."""
    import socket

    sc = _seccomp()
    flt = sc.SyscallFilter(sc.ALLOW)
    for name in ("socket", "socketpair"):
        flt.add_rule(sc.ERRNO(errno.EAFNOSUPPORT), name, sc.Arg(0, sc.NE, socket.AF_UNIX))
    for name in DENIED_SYSCALLS:
        flt.add_rule(sc.ERRNO(errno.EPERM), name)
    try:
        flt.load()
    except OSError as exc:
        raise CageUnavailable(f"seccomp: {exc}") from None


def apply(policy: Policy) -> str:
    """Confine this process for good; a line for the log. CageUnavailable if any part fails."""
    if not policy.network:
        _seccomp()  # loaded (it finds libseccomp) before the files close
    abi = restrict_files(policy.read, policy.write, policy.network)
    if not policy.network:
        deny_network()
    return f"Landlock ABI {abi}" + ("" if policy.network else ", no network (seccomp)")


def python_paths() -> set[str]:
    """Where this interpreter reads its modules and libraries from."""
    import site
    import sys
    import sysconfig

    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    paths.update(v for k, v in sysconfig.get_paths().items() if k != "scripts")
    paths.update(site.getsitepackages())
    paths.update(p for p in sys.path if os.path.isabs(p))
    # Never the checkout holding the harness: it holds .git and the runs folder.
    checkout = str(Path(harness_dir()).parent)
    return {p for p in paths if p and p != checkout and os.path.exists(p)}


def harness_dir() -> str:
    return str(Path(__file__).resolve().parent)
