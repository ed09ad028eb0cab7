"""Starting a Ray head on this machine: `ray start --head --block` in its own
process group, everything on loopback, a private temp dir and token.

Used by `make demo` (a one-node cluster) and by the tests (the same head
with Ray's autoscaler and the fake multi-node provider, whose worker node
types are the RayService's worker groups: kuberay/local_cluster.py).
Stopping the process group stops the head, the autoscaler and every fake
worker node it started (they are its children).
"""
from __future__ import annotations

import secrets
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml

from local_stack.processes import default_sigint, stop_group
from local_stack.serve_configs import free_port


@dataclass
class RayHead:
    process: subprocess.Popen
    address: str  # GCS, host:port
    dashboard_url: str
    metrics_url: str
    env: dict[str, str]

    def stop(self) -> None:
        stop_group(self.process)


def private_cluster_env(env: dict[str, str], temp_dir: str) -> dict[str, str]:
    """Token auth with a token of this cluster's own (Ray's default token file
    is shared by every cluster of the user), for the head and its clients."""
    token_path = Path(temp_dir) / "auth_token"
    token_path.write_text(secrets.token_hex(32))
    token_path.chmod(0o600)
    return dict(env, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_path))


def wait_port(port: int, process: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"`ray start` exited with code {process.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"Ray head not listening on 127.0.0.1:{port} after {timeout_s:.0f} s")


def start_ray_head(
    env: dict[str, str],
    temp_dir: str,
    *,
    num_cpus: Optional[int] = None,
    metrics_port: Optional[int] = None,
    dashboard_port: Optional[int] = None,
    fake_autoscaling: Optional[dict] = None,
) -> RayHead:
    """`fake_autoscaling`: keyword arguments of
    kuberay.local_cluster.fake_autoscaling_config (min_workers,
    idle_timeout_s, ...); the head then runs Ray's autoscaler with the fake
    multi-node provider."""
    gcs_port = free_port()
    metrics_port = metrics_port or free_port()
    dashboard_port = dashboard_port or free_port()
    command = [
        str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
        "--node-ip-address=127.0.0.1", f"--port={gcs_port}", f"--temp-dir={temp_dir}",
        f"--metrics-export-port={metrics_port}",
        "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
        f"--ray-client-server-port={free_port()}",
        "--disable-usage-stats",
    ]
    if num_cpus is not None:
        command.append(f"--num-cpus={num_cpus}")
    # Nothing to drain to on one machine: stop at once on SIGTERM.
    head_env = dict(env, RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0")
    if fake_autoscaling is not None:
        from kuberay.local_cluster import fake_autoscaling_config

        if num_cpus is None:
            raise ValueError("a fake autoscaling cluster needs the head's num_cpus")
        config = fake_autoscaling_config(f"127.0.0.1:{gcs_port}", num_cpus, **fake_autoscaling)
        config_path = Path(temp_dir) / "autoscaling.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        command.append(f"--autoscaling-config={config_path}")
        head_env["RAY_FAKE_CLUSTER"] = "1"
    process = subprocess.Popen(command, env=head_env, start_new_session=True, preexec_fn=default_sigint)
    try:
        wait_port(gcs_port, process)
    except BaseException:
        stop_group(process)
        raise
    return RayHead(
        process=process,
        address=f"127.0.0.1:{gcs_port}",
        dashboard_url=f"http://127.0.0.1:{dashboard_port}",
        metrics_url=f"http://127.0.0.1:{metrics_port}/metrics",
        env=head_env,
    )


def main() -> None:
    """`python -m local_stack.ray_head`: a local Ray cluster to `serve deploy` to,
    its worker node types those of the RayService (kuberay/local_cluster.py)."""
    import argparse
    import shutil
    import signal
    import tempfile

    from local_stack.ray_env import local_ray_env, stop_haproxy

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--num-cpus", type=int, default=8, help="the head's logical CPUs (default 8)")
    parser.add_argument("--idle-timeout-s", type=float, default=60, help="idle worker nodes go after this long")
    parser.add_argument("--dashboard-port", type=int, default=8265)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops it like Ctrl-C
    temp_dir = tempfile.mkdtemp(prefix="sg-ray-", dir="/tmp")
    env = private_cluster_env(local_ray_env(), temp_dir)
    head = start_ray_head(env, temp_dir, num_cpus=args.num_cpus, dashboard_port=args.dashboard_port,
                          fake_autoscaling={"idle_timeout_s": args.idle_timeout_s})
    token = env["RAY_AUTH_TOKEN_PATH"]
    print(f"Ray head at {head.address}, dashboard {head.dashboard_url}, metrics {head.metrics_url}")
    print("Worker node types (added on demand): the RayService's worker groups, see kuberay/local_cluster.py")
    print(f"  RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={token} \\\n"
          f"    python -m cli.deploy CONFIG.yaml --address {head.dashboard_url}")
    print("Ctrl-C stops the cluster", flush=True)
    try:
        head.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        head.stop()
        stop_haproxy(env)
        shutil.rmtree(temp_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
