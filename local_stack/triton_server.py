"""The local Triton: the `tritonserver` binary of the `nvidia-pytriton` wheel,
run from its own environment (`.venv-triton`, numpy<2, onnxruntime) because
its python-backend stub breaks with numpy 2. Binds 127.0.0.1 only.

    python -m local_stack.triton_server --repo .local/triton/models
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

from local_stack.paths import PROJECT_ROOT, StackPaths
from local_stack.processes import serve_until_stopped
from local_stack.v2_server import V2ServerProcess

TRITON_VENV = Path(os.environ.get("TRITON_VENV", PROJECT_ROOT / ".venv-triton"))
PY_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"


def _site_packages() -> Path:
    return TRITON_VENV / "lib" / f"python{PY_VERSION}" / "site-packages"


def _pytriton() -> Path:
    path = _site_packages() / "pytriton" / "tritonserver"
    if not (path / "bin" / "tritonserver").exists():
        raise FileNotFoundError(f"no tritonserver in {path}: run `make triton-env` (installs nvidia-pytriton into {TRITON_VENV})")
    return path


def install_backend(backends: Path) -> Path:
    """Copy (never symlink: Triton rejects links) the python backend files."""
    pytriton = _pytriton()
    target = backends / "python"
    target.mkdir(parents=True, exist_ok=True)
    for src in (
        pytriton / "backends" / "python" / "libtriton_python.so",
        pytriton / "backends" / "python" / "triton_python_backend_utils.py",
        pytriton / "python_backend_stubs" / PY_VERSION / "triton_python_backend_stub",
    ):
        dst = target / src.name
        if not dst.exists() or dst.stat().st_size != src.stat().st_size:
            shutil.copy2(src, dst)
    return backends


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    libs = [sysconfig.get_config_var("LIBDIR"), str(_site_packages() / "nvidia_pytriton.libs")]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(libs + [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p])
    # The embedded interpreter of the backend stub finds its prefix through the
    # first `python3` on PATH: put the Triton venv's first so that it imports
    # that venv's numpy<2 and onnxruntime.
    env["PATH"] = os.pathsep.join([str(TRITON_VENV / "bin"), env.get("PATH", "")])
    env["PYTHONPATH"] = str(_site_packages())
    env["VIRTUAL_ENV"] = str(TRITON_VENV)
    env.pop("PYTHONHOME", None)
    return env


@dataclass
class TritonServer(V2ServerProcess):
    """One tritonserver process in its own process group."""

    name = "triton"
    repo: Path
    backends: Path
    http_port: int = 8100
    grpc_port: int = 8101
    metrics_port: int = 8102
    log_file: Path | None = None
    process: subprocess.Popen | None = field(default=None, init=False)

    def command(self) -> list[str]:
        return [
            str(_pytriton() / "bin" / "tritonserver"),
            f"--model-repository={self.repo}",
            f"--backend-directory={install_backend(self.backends)}",
            "--http-address=127.0.0.1",
            f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}",
            "--metrics-address=127.0.0.1",
            f"--metrics-port={self.metrics_port}",
            "--allow-metrics=true",
            "--allow-gpu-metrics=false",
            "--strict-readiness=true",
            "--exit-timeout-secs=5",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
        ]

    def server_env(self) -> dict[str, str]:
        return server_env()

    @property
    def shm_prefix(self) -> str:
        """This server's python-backend shared-memory regions (/dev/shm) start
        with this: a crashed server leaves them behind, and they are ours to remove."""
        return f"sg_triton_{self.http_port}_"

    def remove_leftovers(self) -> list[str]:
        """After the server died: remove its shared-memory regions (its stubs
        are gone with its process group). Returns what was removed."""
        removed = []
        for region in Path("/dev/shm").glob(f"{self.shm_prefix}*"):
            region.unlink(missing_ok=True)
            removed.append(region.name)
        return removed


def main() -> None:
    paths = StackPaths()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, default=paths.triton_repo)
    parser.add_argument("--http-port", type=int, default=8100)
    parser.add_argument("--grpc-port", type=int, default=8101)
    parser.add_argument("--metrics-port", type=int, default=8102)
    args = parser.parse_args()
    server = TritonServer(args.repo, paths.triton_backends, args.http_port, args.grpc_port, args.metrics_port)
    serve_until_stopped(server, "Triton ready: HTTP {server.http_url}, gRPC {server.grpc_url}, metrics {server.metrics_url}",
                        state_dir=paths.supervised)


if __name__ == "__main__":
    main()
