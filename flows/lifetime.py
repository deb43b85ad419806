"""Child processes that die with their parent, even when the parent is killed with -9.

Linux delivers a chosen signal to a process when the thread that created it exits
(``prctl(PR_SET_PDEATHSIG)``). A command's worker processes and its temporary Prefect server
ask for it, so no worker, tracker or server outlives a run however it ends. Elsewhere the call
does nothing (the parent's normal shutdown still stops them).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int, sig: int = signal.SIGKILL) -> None:
    """In a child: be sent ``sig`` when the parent exits; exit now if it already has."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os._exit(1)
