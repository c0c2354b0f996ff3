"""Processes the harness starts die with it: a `kill -9` of `harness accuracy` or `harness nightly` must
not leave a QEMU (or a cell worker that goes on writing records) behind.

Linux's parent-death signal does it: the kernel sends SIGKILL to the child when the process that
started it goes away, however it went. It is set with `setpriv --pdeathsig` (util-linux, on every Debian)
for a program we exec, and with prctl() in a Python worker. Elsewhere both are no-ops.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import sys

PR_SET_PDEATHSIG = 1


def tied_to_parent(cmd: list[str]) -> list[str]:
    """`cmd` prefixed so that the program is killed when this process dies."""
    if sys.platform.startswith("linux") and shutil.which("setpriv"):
        return ["setpriv", "--pdeathsig", "KILL", *cmd]
    return cmd


def die_with_parent() -> None:
    """Call first thing in a worker process: it is killed when its parent dies (and exits now if the
    parent is already gone, the race between fork and this call)."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent or parent == 1:
        os._exit(1)
