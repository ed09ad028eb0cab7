"""Stopping what we started: each server runs in its own process group
(`start_new_session=True`) and is stopped through that group only."""
from __future__ import annotations

import os
import signal
import subprocess


def stop_group(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout_s: float = 30) -> None:
    """Signal the process group, SIGKILL it if it is still there after the timeout."""
    if process.poll() is not None:
        return
    pgid = os.getpgid(process.pid)
    os.killpg(pgid, sig)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(pgid, signal.SIGKILL)
        process.wait()


def default_sigint() -> None:
    """preexec_fn: a shell's background job starts with SIGINT ignored, and its
    children inherit that; give them Ctrl-C back."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
