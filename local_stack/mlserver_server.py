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
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from local_stack.paths import PROJECT_ROOT, StackPaths
from local_stack.processes import serve_until_stopped
from local_stack.v2_server import V2ServerProcess

MLSERVER_VENV = Path(os.environ.get("MLSERVER_VENV", PROJECT_ROOT / ".venv-mlserver"))


def _binary() -> Path:
    path = MLSERVER_VENV / "bin" / "mlserver"
    if not path.exists():
        raise FileNotFoundError(f"no mlserver in {MLSERVER_VENV}: run `make mlserver-env`")
    return path


@dataclass
class MLServer(V2ServerProcess):
    """One `mlserver start` process in its own process group."""

    name = "mlserver"
    repo: Path
    http_port: int = 8110
    grpc_port: int = 8111
    metrics_port: int = 8112
    log_file: Path | None = None
    process: subprocess.Popen | None = field(default=None, init=False)

    def command(self) -> list[str]:
        return [str(_binary()), "start", str(self.repo)]

    def server_env(self) -> dict[str, str]:
        """Its settings as MLServer reads them from the environment (MLSERVER_*:
        nothing written to the repository); none of this venv's Python paths."""
        env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        return env | {"MLSERVER_HOST": "127.0.0.1", "MLSERVER_HTTP_PORT": str(self.http_port),
                      "MLSERVER_GRPC_PORT": str(self.grpc_port), "MLSERVER_METRICS_PORT": str(self.metrics_port),
                      "MLSERVER_PARALLEL_WORKERS": "0", "MLSERVER_LOAD_MODELS_AT_STARTUP": "true"}

    def cwd(self) -> Path:
        return self.repo

    def start(self, timeout_s: float = 90.0) -> "MLServer":  # its first start imports pandas and scikit-learn
        return super().start(timeout_s)


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
