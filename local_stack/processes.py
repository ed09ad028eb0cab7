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


def serve_until_stopped(server, ready: str, state_dir=None) -> None:
    """A server's `python -m` entry point: start it under a Supervisor (a
    crash restarts it), print `ready` (a format string over the server's
    attributes), run until Ctrl-C or SIGTERM, stop it."""
    import sys
    import threading

    from local_stack.supervisor import Supervisor

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    supervised = Supervisor(server, state_dir=state_dir)
    try:
        supervised.start()
        print(ready.format(server=server), flush=True)
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        supervised.close()
