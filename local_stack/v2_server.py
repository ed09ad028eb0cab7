"""What the local Open Inference Protocol servers (Triton, MLServer) share:
a process in its own process group, started with its log appended to a
file, ready when `GET /v2/health/ready` answers 200 on 127.0.0.1, stopped by
SIGTERM to its group (SIGKILL after a grace period). A server class gives
`name`, its ports and `log_file` as dataclass fields, `command()`, and
`server_env()` / `cwd()` / `remove_leftovers()` where it needs them; the
Supervisor (local_stack/supervisor.py) restarts it when it dies."""
from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any, Optional


class V2ServerProcess:
    name: str
    http_port: int
    grpc_port: int
    metrics_port: int
    log_file: Optional[Path]
    process: Optional[subprocess.Popen]

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def addresses(self) -> list[str]:
        """Where clients reach it (what a graph node's `url` says)."""
        return [self.grpc_url, self.http_url]

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def command(self) -> list[str]:
        raise NotImplementedError

    def server_env(self) -> dict[str, str]:
        return dict(os.environ)

    def cwd(self) -> Optional[Path]:
        return None

    def remove_leftovers(self) -> list[str]:
        """After the server died: what it left behind, removed (names)."""
        return []

    def start(self, timeout_s: float = 60.0) -> Any:
        out = open(self.log_file, "ab") if self.log_file else None
        try:
            self.process = subprocess.Popen(self.command(), env=self.server_env(), cwd=self.cwd(), stdout=out,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            if out is not None:
                out.close()  # the server has its own copy
        self.wait_ready(timeout_s)
        return self

    def is_ready(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with code {self.process.returncode}; log: {self.log_file}")
            if self.is_ready():
                return
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"{self.name} not ready on {self.http_url} after {timeout_s:.0f} s; log: {self.log_file}")

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM the server's own process group (SIGKILL after `timeout_s`, then its leftovers removed)."""
        if self.process is None or self.process.poll() is not None:
            return
        pgid = os.getpgid(self.process.pid)
        os.killpg(pgid, signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self.process.wait()
            self.remove_leftovers()
