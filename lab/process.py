"""Child processes of the harness that must not outlive it."""

from __future__ import annotations

import ctypes
import signal

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """preexec_fn: the kernel kills the child when the harness dies, however it dies.

    It fires when the *thread* that forked the child ends: fork from a thread that lives
    as long as the harness (a driver that boots machines ahead keeps one)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
