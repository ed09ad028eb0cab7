"""The local Triton: the `tritonserver` binary of the `nvidia-pytriton` wheel,
run from its own environment (`.venv-triton`, numpy<2, onnxruntime) because
its python-backend stub breaks with numpy 2. Binds 127.0.0.1 only.

    python -m local_stack.triton_server --repo .local/triton/models
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from local_stack.paths import PROJECT_ROOT, StackPaths
from local_stack.processes import serve_until_stopped

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
class TritonServer:
    """One tritonserver process in its own process group."""

    name = "triton"
    repo: Path
    backends: Path
    http_port: int = 8100
    grpc_port: int = 8101
    metrics_port: int = 8102
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
        """Where clients reach it (what a graph node's `url` says)."""
        return [self.grpc_url, self.http_url]

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

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

    def start(self, timeout_s: float = 60.0) -> "TritonServer":
        out = open(self.log_file, "ab") if self.log_file else None
        try:
            self.process = subprocess.Popen(
                self.command(), env=server_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
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
                raise RuntimeError(f"tritonserver exited with code {self.process.returncode}; log: {self.log_file}")
            if self.is_ready():
                return
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"tritonserver not ready on {self.http_url} after {timeout_s:.0f} s; log: {self.log_file}")

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM the server's own process group (server and backend stubs)."""
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
