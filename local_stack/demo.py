"""`make demo`: the recommend graph on the embedded stack.

Checks the config, starts the local Triton, runs `serve run` on the config,
waits for /readyz and prints where to send requests. Ctrl-C stops everything
it started (by process group, nothing else).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from apps.check import ConfigError, check_file
from local_stack.paths import PROJECT_ROOT, StackPaths
from local_stack.ray_env import local_ray_env
from local_stack.triton_server import TritonServer

EXAMPLE = {"user_id": 7, "item_ids": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], "k": 3}


def wait_ready(url: str, process: subprocess.Popen, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"`serve run` exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return json.load(response)
        except urllib.error.HTTPError as error:
            last = error.read().decode(errors="replace")
        except OSError as error:
            last = str(error)
        time.sleep(1)
    raise TimeoutError(f"{url} not ready after {timeout_s:.0f} s: {last}")


def stop(process: subprocess.Popen, timeout_s: float = 30) -> None:
    if process.poll() is not None:
        return
    pgid = os.getpgid(process.pid)
    os.killpg(pgid, signal.SIGINT)  # `serve run` shuts Serve and its local cluster down
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(pgid, signal.SIGKILL)
        process.wait()


def _default_signals() -> None:
    """A shell's background job starts with SIGINT ignored; let Ctrl-C work anyway."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def main() -> None:
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", default="configs/local.yaml")
    parser.add_argument("--ready-timeout", type=float, default=180)
    args = parser.parse_args()
    config_path = Path(args.config).resolve()
    try:
        schema = check_file(config_path)
    except ConfigError as error:
        sys.exit(f"{args.config} is invalid:\n{error}")
    host, port = schema.http_options.host, schema.http_options.port
    base = f"http://{host}:{port}"

    paths = StackPaths()
    paths.logs.mkdir(parents=True, exist_ok=True)
    triton = TritonServer(paths.triton_repo, paths.triton_backends, log_file=paths.logs / "triton.log")
    print(f"==> starting Triton (log {triton.log_file})", flush=True)
    triton.start()
    print(f"    ready: gRPC {triton.grpc_url}, HTTP {triton.http_url}, metrics {triton.metrics_url}", flush=True)

    serve_cli = Path(sys.executable).parent / "serve"
    print(f"==> serve run {args.config}", flush=True)
    serve_run = subprocess.Popen(
        [str(serve_cli), "run", str(config_path)],
        cwd=PROJECT_ROOT,
        env=local_ray_env(),
        start_new_session=True,
        preexec_fn=_default_signals,
    )
    try:
        readiness = wait_ready(f"{base}/readyz", serve_run, args.ready_timeout)
        print("\n" + "=" * 72)
        print(f"recommend graph ready on {base}  ({readiness['checks']['ranker']['detail']})")
        print(f"  curl -s {base}/recommend -H 'content-type: application/json' \\\n    -d '{json.dumps(EXAMPLE)}'")
        print(f"  curl -s {base}/readyz     # readiness of Feast, Triton, registry")
        print(f"  OpenAPI docs: {base}/docs;  Ctrl-C stops Serve and Triton")
        print("=" * 72 + "\n", flush=True)
        serve_run.wait()
    except KeyboardInterrupt:
        pass
    finally:
        print("==> stopping", flush=True)
        stop(serve_run)
        triton.stop()


if __name__ == "__main__":
    main()
