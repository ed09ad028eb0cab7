"""Environment for the Ray clusters this project starts on one machine."""
from __future__ import annotations

import os

# Keep Ray's own servers on loopback, run replicas at normal priority (Ray's
# default nice 15 cost 35% throughput here), keep vendors' telemetry off.
LOCAL_RAY_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_worker_niceness": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "FEAST_USAGE": "False",
}


def local_ray_env(base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    for key, value in LOCAL_RAY_ENV.items():
        env.setdefault(key, value)
    return env
