"""Environment for the Ray clusters this project starts on one machine.

Ray Serve reads these at cluster start (controller, proxies and replicas
inherit them), so they are set on the process that starts the cluster:
`serve run` in the demo and the benchmark, `ray.init` in the tests.
"""
from __future__ import annotations

import os
import tempfile

from local_stack.serve_configs import free_port

# Keep Ray's own servers on loopback, run replicas at normal priority (Ray's
# default nice 15 cost 35% throughput here), keep vendors' telemetry off.
LOCAL_RAY_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_worker_niceness": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "FEAST_USAGE": "False",
}


def fast_ingress_env() -> dict[str, str]:
    """Ray 2.60's throughput-optimized mode with HAProxy in front.

    gRPC between replicas, and HAProxy on the Serve HTTP port forwarding
    straight to the ingress replica's own HTTP server (no Python proxy hop).
    Measured on /recommend (bench/): p50 at concurrency 1 went from 2.3x to
    1.2x the plain-uvicorn baseline, req/s at 32 from 0.34x to 0.77x.
    HAProxy's files go to a short private folder (its admin socket path is
    capped at 97 characters) and its side ports are free ones, so two
    clusters on one host do not collide. Its stats and metrics listeners bind
    all interfaces (Ray offers no setting for them).
    """
    files = tempfile.mkdtemp(prefix="sgh", dir="/tmp")
    return {
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": f"{files}/haproxy.cfg",
        "RAY_SERVE_HAPROXY_SOCKET_PATH": f"{files}/admin.sock",
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": files,
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": f"{files}/server-state",
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(free_port()),
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(free_port()),
    }


def local_ray_env(base: dict[str, str] | None = None, fast_ingress: bool | None = None) -> dict[str, str]:
    """`base` (default: os.environ) plus the local settings.

    Fast ingress is on unless `SERVE_FAST_INGRESS=0` (then Serve's own Python
    HTTP proxy answers on the Serve port, as with Ray's defaults).
    """
    env = dict(os.environ if base is None else base)
    for key, value in LOCAL_RAY_ENV.items():
        env.setdefault(key, value)
    if fast_ingress is None:
        fast_ingress = env.get("SERVE_FAST_INGRESS", "1") == "1"
    if fast_ingress:
        env.update(fast_ingress_env())
    return env


def stop_haproxy(env: dict[str, str]) -> list[int]:
    """SIGTERM the HAProxy processes of one cluster (found by the private
    files folder in their command line) and remove that folder.

    HAProxy is started by a Serve actor in a session of its own, so it
    outlives a cluster that is stopped without `serve shutdown`.
    """
    import shutil
    import signal
    from pathlib import Path

    files = env.get("RAY_SERVE_HAPROXY_SERVER_STATE_BASE")
    if not files:
        return []
    stopped = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if Path(argv[0]).name == "haproxy" and any(files in arg for arg in argv[1:]):
            try:
                os.kill(int(proc.name), signal.SIGTERM)
                stopped.append(int(proc.name))
            except ProcessLookupError:
                pass
    shutil.rmtree(files, ignore_errors=True)
    return stopped
