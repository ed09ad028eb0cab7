"""Why a local backend is down, as its supervisor saw it.

On one machine the local stack runs Triton (and Redis) under a supervisor
(local_stack/supervisor.py) that restarts a crashed server and writes its
state to `$SG_SUPERVISED_STATE_DIR/<name>.json`. A readiness check that
cannot reach a backend adds what the supervisor knows ("exited with signal
11 at 15:36:18, restarting"), so `/readyz` says why, not only that. In a
cluster the variable is unset and this says nothing: Kubernetes restarts
pods and reports them itself.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

STATE_DIR_ENV = "SG_SUPERVISED_STATE_DIR"  # set where the local Ray cluster starts (local_stack/demo.py, tests/conftest.py)


def _bare(address: str) -> str:
    return address.split("://", 1)[-1].rstrip("/")


def supervisor_note(address: str) -> Optional[str]:
    """The supervisor's account of the server at `address` when it is not
    ready, e.g. "local supervisor: triton restarting after signal 11
    (SIGSEGV) at 15:36:18 (restarts so far: 1)"; None when all is well or
    nothing supervises it."""
    folder = os.environ.get(STATE_DIR_ENV)
    if not folder:
        return None
    for path in Path(folder).glob("*.json"):
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if _bare(address) not in {_bare(a) for a in state.get("addresses", [])} or state.get("state") == "ready":
            continue
        cause = f" after {state['last_exit']}" if state.get("last_exit") else ""
        return f"local supervisor: {state.get('name')} {state.get('state')}{cause} (restarts so far: {state.get('restarts', 0)})"
    return None
