"""A child that dies with its parent (Linux's parent-death signal, prctl PR_SET_PDEATHSIG).

`autoresearch run` on the embedded default starts a redis-server and local workers; each
worker runs its jobs in its own process and starts the phases (the next job's waiting train
process too). A SIGKILL to any of them (the OOM killer, `kill -9`) runs no cleanup, so each
link asks the kernel to kill it when the process above it dies: orchestrator -> redis-server
and workers -> phases. Nothing is left running with parent 1 to take the next job from a
Redis nobody reads.

The signal follows the *thread* that forked the child: call these from the main thread.
Elsewhere than Linux they do nothing (and say so in the README's table).
"""

from __future__ import annotations

import ctypes
import signal
import sys
import threading
from typing import Any

# Loaded here, not in a forked child, where loading a library is not safe.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """This process gets `sig` when its parent dies (a preexec_fn, or a forked child's
    first call). It survives exec, so it holds for a redis-server started this way."""
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, int(sig))


def preexec() -> Any:
    """A Popen preexec_fn for a child that dies with this process: die_with_parent from
    the main thread; from another thread, None (the signal would follow that thread)."""
    return die_with_parent if threading.current_thread() is threading.main_thread() else None


def become_subreaper() -> None:
    """Orphans of this process's descendants are re-parented here, not to init."""
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_CHILD_SUBREAPER, 1)
