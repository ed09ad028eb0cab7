"""The local MLServer (Seldon's Open Inference Protocol server), the second
v2 server behind the graphs' `v2_model` nodes: `mlserver start` from its own
environment (`.venv-mlserver`: its FastAPI and numpy pins are not the
platform's), serving the repository the stack exports from the registry
(deployments/mlserver_repository.py). Binds 127.0.0.1 only, its model
loaded in the server process (no worker pool: one model, one laptop).

    python -m local_stack.mlserver_server
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from local_stack.paths import PROJECT_ROOT, StackPaths
from local_stack.processes import serve_until_stopped

MLSERVER_VENV = Path(os.environ.get("MLSERVER_VENV", PROJECT_ROOT / ".venv-mlserver"))


def _binary() -> Path:
    path = MLSERVER_VENV / "bin" / "mlserver"
    if not path.exists():
        raise FileNotFoundError(f"no mlserver in {MLSERVER_VENV}: run `make mlserver-env`")
    return path


@dataclass
class MLServer:
    """One `mlserver start` process in its own process group."""

    name = "mlserver"
    repo: Path
    http_port: int = 8110
    grpc_port: int = 8111
    metrics_port: int = 8112
    log_file: Path | None = None
    process: subprocess.Popen | None = field(default=None, init=False)

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def addresses(self) -> list[str]:
        return [self.grpc_url, self.http_url]

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def settings_env(self) -> dict[str, str]:
        """Its settings, as MLServer reads them from the environment (MLSERVER_*): nothing written to the repository."""
        return {"MLSERVER_HOST": "127.0.0.1", "MLSERVER_HTTP_PORT": str(self.http_port), "MLSERVER_GRPC_PORT": str(self.grpc_port),
                "MLSERVER_METRICS_PORT": str(self.metrics_port), "MLSERVER_PARALLEL_WORKERS": "0",
                "MLSERVER_LOAD_MODELS_AT_STARTUP": "true"}

    def command(self) -> list[str]:
        return [str(_binary()), "start", str(self.repo)]

    def remove_leftovers(self) -> list[str]:
        return []

    def start(self, timeout_s: float = 90.0) -> "MLServer":
        env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        env.update(self.settings_env())
        out = open(self.log_file, "ab") if self.log_file else None
        try:
            self.process = subprocess.Popen(self.command(), cwd=self.repo, env=env, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        finally:
            if out is not None:
                out.close()
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
                raise RuntimeError(f"mlserver exited with code {self.process.returncode}; log: {self.log_file}")
            if self.is_ready():
                return
            time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"mlserver not ready on {self.http_url} after {timeout_s:.0f} s; log: {self.log_file}")

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM the server's own process group."""
        if self.process is None or self.process.poll() is not None:
            return
        pgid = os.getpgid(self.process.pid)
        os.killpg(pgid, signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self.process.wait()


def main() -> None:
    paths = StackPaths()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, default=paths.mlserver_repo)
    parser.add_argument("--http-port", type=int, default=8110)
    parser.add_argument("--grpc-port", type=int, default=8111)
    parser.add_argument("--metrics-port", type=int, default=8112)
    args = parser.parse_args()
    server = MLServer(args.repo, args.http_port, args.grpc_port, args.metrics_port)
    serve_until_stopped(server, "MLServer ready: HTTP {server.http_url}, gRPC {server.grpc_url}, metrics {server.metrics_url}",
                        state_dir=paths.supervised)


if __name__ == "__main__":
    main()
