"""Prometheus and promtool from Debian's `prometheus` package, unpacked into
`.local/prometheus/` (`apt-get download` and `dpkg -x`: the binaries only,
no service started, nothing installed system-wide), and a Prometheus server
on 127.0.0.1 for the local stack:

    python -m local_stack.prometheus                     # observability/prometheus.yml, the demo's ports
    .local/prometheus/usr/bin/promtool check rules observability/alerts.yml

What it is for: the alert rules checked by Prometheus' own promtool
(tests/unit/test_observability.py), and the dashboard's panels drawn from a
real Prometheus's answers (python -m local_stack.dashboard_snapshot).
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from local_stack.paths import StackPaths
from local_stack.processes import stop_group
from local_stack.serve_configs import free_port

PACKAGE = "prometheus"
VERSION = "2.42.0+ds-5+deb12u1"  # Debian 12's; another release's is taken when this one is gone


def binaries(paths: StackPaths = StackPaths()) -> Path:
    return paths.root / "prometheus" / "usr" / "bin"


def is_unpacked(paths: StackPaths = StackPaths()) -> bool:
    return (binaries(paths) / "prometheus").exists() and (binaries(paths) / "promtool").exists()


def unpack(paths: StackPaths = StackPaths()) -> str:
    """Download the package (pinned, else the archive's) and unpack it; its version."""
    target = paths.root / "prometheus"
    with tempfile.TemporaryDirectory(prefix="sg-prometheus-") as folder:
        for wanted in (f"{PACKAGE}={VERSION}", PACKAGE):
            result = subprocess.run(["apt-get", "download", wanted], cwd=folder, capture_output=True, text=True, timeout=300)
            if result.returncode == 0:
                break
        else:
            raise RuntimeError(f"apt-get download {PACKAGE} failed: {result.stderr.strip()[-500:]}")
        (deb,) = Path(folder).glob("*.deb")
        shutil.rmtree(target, ignore_errors=True)
        subprocess.run(["dpkg", "-x", str(deb), str(target)], check=True, timeout=300)
        return deb.name.split("_")[1]


@dataclass
class PrometheusServer:
    """One Prometheus on 127.0.0.1, its data in a temp folder removed at stop."""

    config: Path
    port: int = field(default_factory=free_port)
    paths: StackPaths = field(default_factory=StackPaths)
    log_file: Path | None = None
    process: subprocess.Popen | None = field(default=None, init=False)
    data: Path | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30) -> "PrometheusServer":
        self.data = Path(tempfile.mkdtemp(prefix="sg-prometheus-data-"))
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
        try:
            self.process = subprocess.Popen(
                [str(binaries(self.paths) / "prometheus"), f"--config.file={self.config}",
                 f"--web.listen-address=127.0.0.1:{self.port}", f"--storage.tsdb.path={self.data}"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            if out is not subprocess.DEVNULL:
                out.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited with code {self.process.returncode}; log: {self.log_file}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"prometheus not ready on {self.url} within {timeout_s:g} s; log: {self.log_file}")

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process, timeout_s=10)
        if self.data is not None:
            shutil.rmtree(self.data, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=Path("observability/prometheus.yml"))
    parser.add_argument("--port", type=int, default=9090)
    args = parser.parse_args()
    server = PrometheusServer(args.config.resolve(), port=args.port).start()
    print(f"Prometheus on {server.url} (Ctrl-C stops it)", flush=True)
    try:
        server.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
