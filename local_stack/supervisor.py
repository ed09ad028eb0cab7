"""Keeps a local server up, as Kubernetes keeps a pod up in a cluster.

On a laptop nothing restarts the local Triton (or Redis) when it dies: one
crash of Triton's python backend (a SIGSEGV, see docs/operations.md) left
the demo and a whole test session without a model server. A `Supervisor`
owns one server process: when the process exits without being asked to, it
is started again after an exponential backoff (reset once the server has
stayed up a while), each exit and restart is logged and counted, and the
server's state is written to a small JSON file that the graph's `/readyz`
reads to say why a local backend is down (deployments/local_supervision.py).

A stop asked for through the supervisor is not a crash: `stop()` then
`start()` is how a test takes Triton away on purpose and brings it back.
Any other attribute is the server's own (`triton.grpc_url`, `triton.process`).
"""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

from deployments.local_supervision import STATE_DIR_ENV  # noqa: F401 (set where Ray starts)


class Server(Protocol):
    """What a supervised server offers (TritonServer, RedisServer)."""

    name: str
    process: Any

    @property
    def addresses(self) -> list[str]: ...

    def start(self, timeout_s: float = ...) -> Any: ...

    def is_ready(self) -> bool: ...

    def remove_leftovers(self) -> list[str]:
        """After the process died: remove what it left behind; say what."""

    def stop(self) -> None: ...


@dataclass(frozen=True)
class Backoff:
    """Delays between restarts: initial_s, doubled each time up to max_s; a
    server that stayed up reset_after_s counts its next crash as the first."""

    initial_s: float = 0.5
    factor: float = 2.0
    max_s: float = 30.0
    reset_after_s: float = 60.0

    def delay(self, attempt: int) -> float:
        return min(self.max_s, self.initial_s * self.factor ** max(0, attempt - 1))


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"signal {-returncode} ({signal.Signals(-returncode).name})"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


def _stderr(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


class Supervisor:
    """Starts `server`, watches its process, restarts it when it dies on its own."""

    def __init__(self, server: Server, *, backoff: Backoff = Backoff(), state_dir: Optional[Path] = None,
                 log: Callable[[str], None] = _stderr, poll_s: float = 0.2, start_timeout_s: float = 60.0):
        self.server = server
        self.backoff = backoff
        self.state_file = Path(state_dir) / f"{server.name}.json" if state_dir else None
        self.log = log
        self.poll_s = poll_s
        self.start_timeout_s = start_timeout_s
        self.restarts = 0  # restarts after crashes, not the ones asked for
        self.last_exit: Optional[str] = None
        self._lock = threading.RLock()
        self._wanted = False
        self._closed = threading.Event()
        self._wake = threading.Event()
        self._watcher: Optional[threading.Thread] = None
        self._up_since = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.server, name)

    # --- what callers ask for -------------------------------------------------
    def start(self, timeout_s: Optional[float] = None) -> "Supervisor":
        with self._lock:
            self._wanted = True
            self._write_state("starting")
            self.server.start(timeout_s or self.start_timeout_s)
            self._up_since = time.monotonic()
            self._write_state("ready")
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, name=f"supervise-{self.server.name}", daemon=True)
            self._watcher.start()
        return self

    def stop(self) -> None:
        """Stop on purpose: no restart until start() is called again."""
        with self._lock:
            self._wanted = False
            self._wake.set()
            self.server.stop()
            self._write_state("stopped")

    def close(self) -> None:
        """Stop the server and the watcher for good."""
        self._closed.set()
        self.stop()
        if self._watcher is not None:
            self._watcher.join(timeout=5)

    def ensure_ready(self, timeout_s: float = 90.0, grace_s: float = 10.0) -> Optional[str]:
        """Up and answering before a caller relies on it: started when an
        earlier caller left it stopped, waited for while the watcher restarts
        it, resumed when frozen (SIGSTOP), restarted when it still does not
        answer after grace_s. Returns what had to be done, None if nothing."""
        if not self._wanted:
            self.start()
            return f"{self.server.name} was left stopped: started again"
        if self.server.is_ready():
            return None
        deadline = time.monotonic() + timeout_s
        process = self.server.process
        if process is not None and process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGCONT)  # a no-op unless it was frozen
            except (ProcessLookupError, PermissionError):
                pass
        grace_end = time.monotonic() + grace_s
        while time.monotonic() < grace_end:
            if self.server.is_ready():
                return f"{self.server.name} was not ready: back after waiting ({self.status()})"
            time.sleep(0.2)
        with self._lock:
            self.log(f"supervisor: {self.server.name} not ready after {grace_s:g} s: restarting it")
            self.server.stop()
            self.server.start(max(1.0, deadline - time.monotonic()))
            self._up_since = time.monotonic()
            self._write_state("ready")
        return f"{self.server.name} did not answer: restarted"

    def status(self) -> dict[str, Any]:
        return {"name": self.server.name, "addresses": list(self.server.addresses), "restarts": self.restarts,
                "last_exit": self.last_exit, "running": self._running()}

    # --- the watcher ----------------------------------------------------------
    def _running(self) -> bool:
        process = self.server.process
        return process is not None and process.poll() is None

    def _watch(self) -> None:
        attempt = 0
        while not self._closed.is_set():
            self._wake.wait(self.poll_s)
            self._wake.clear()
            with self._lock:
                process = self.server.process
                if not self._wanted or process is None or process.poll() is None:
                    continue
                uptime_s = time.monotonic() - self._up_since
                attempt = 1 if uptime_s >= self.backoff.reset_after_s else attempt + 1
                self.last_exit = f"{describe_exit(process.returncode)} at {time.strftime('%H:%M:%S')}"
                delay_s = self.backoff.delay(attempt)
                self.log(f"supervisor: {self.server.name} exited unexpectedly ({self.last_exit}, up {uptime_s:.0f} s); "
                         f"restart {self.restarts + 1} in {delay_s:g} s")
                self._kill_leftovers(process.pid)
                removed = self.server.remove_leftovers()
                if removed:
                    self.log(f"supervisor: removed what the dead {self.server.name} left behind: {', '.join(removed)}")
                self._write_state("restarting", next_restart_in_s=delay_s)
            if self._closed.wait(delay_s):
                return
            with self._lock:
                if not self._wanted or self._running():
                    continue
                try:
                    self.server.start(self.start_timeout_s)
                except Exception as error:  # noqa: BLE001 - logged, retried with the next backoff
                    self.log(f"supervisor: {self.server.name} failed to restart: {error}")
                    self._write_state("down", error=str(error))
                    continue
                self.restarts += 1
                self._up_since = time.monotonic()
                self.log(f"supervisor: {self.server.name} is back (restart {self.restarts})")
                self._write_state("ready")

    @staticmethod
    def _kill_leftovers(pgid: int) -> None:
        """The dead server's group may still hold children (Triton's backend
        stubs): they go before a new server starts."""
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def _write_state(self, state: str, **extra: Any) -> None:
        if self.state_file is None:
            return
        record = {"name": self.server.name, "state": state, "addresses": list(self.server.addresses),
                  "restarts": self.restarts, "last_exit": self.last_exit, "since": time.time(), **extra}
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.state_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(record))
        temporary.replace(self.state_file)
