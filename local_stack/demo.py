"""`make demo`: the recommend graph on the embedded stack.

Checks the config, starts the local Triton and a one-node Ray cluster
(`ray start --head --block`, so its Prometheus endpoint and dashboard have
known ports), runs `serve run` of the config against it, waits for /readyz
and prints where to send requests. Ctrl-C stops everything it started, each
by its own process group.
"""
from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from cli.check import ConfigError, check_file
from local_stack.paths import PROJECT_ROOT, StackPaths
from local_stack.processes import default_sigint, stop_group
from local_stack.ray_head import private_cluster_env, start_ray_head
from local_stack.ray_env import local_ray_env, stop_haproxy
from local_stack.supervisor import STATE_DIR_ENV, Supervisor
from local_stack.mlserver_server import MLServer
from local_stack.triton_server import TritonServer

EXAMPLE = {"user_id": 7, "item_ids": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], "k": 3}
CHAT_EXAMPLE = {"model": "smollm2", "messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 32}


# The demo head's logical CPUs: the cores, and at least this many. The
# shipped apps reserve 2.25 (the LLM engine's bundle 1, the ensemble's PyTorch
# node 0.5, three graph ingresses a quarter each) and a user's graph a quarter
# more, or a whole one per node of user code placed apart: on a 2-core laptop
# that is more than the cores. Logical CPUs are Ray's scheduling budget, not a
# limit (the ingresses and the nodes that call a backend mostly wait), so the
# head declares room rather than leave a user's graph pending for want of it.
DEMO_HEAD_MIN_CPUS = 4


def demo_head_cpus(cores: int | None = None) -> int:
    import os

    return max(cores if cores is not None else (os.cpu_count() or 1), DEMO_HEAD_MIN_CPUS)


def oip_example(base: str) -> str:
    """The Open Inference Protocol call the demo prints: the official
    `tritonclient.http`, unchanged, against the recommend graph (a test runs
    it as printed)."""
    address = base.removeprefix("http://") + "/recommend"
    code = (
        "import numpy as np, tritonclient.http as t; "
        f"c = t.InferenceServerClient('{address}'); "
        "x = [t.InferInput('user_id', [1], 'INT64'), t.InferInput('item_ids', [3], 'INT64')]; "
        "x[0].set_data_from_numpy(np.array([7], dtype=np.int64)); x[1].set_data_from_numpy(np.array([1, 2, 3], dtype=np.int64)); "
        "print(c.infer('recommend', x).as_numpy('items'))"
    )
    return f'.venv/bin/python -c "{code}"'


def oip_grpc_example(address: str) -> str:
    """The same call over gRPC, through Serve's gRPC proxy: the official
    `tritonclient.grpc`, the app named in the `application` metadata (a test
    runs it as printed)."""
    code = (
        "import json, numpy as np, tritonclient.grpc as t; "
        f"c = t.InferenceServerClient('{address}'); "
        "x = [t.InferInput('user_id', [1], 'INT64'), t.InferInput('item_ids', [3], 'INT64')]; "
        "x[0].set_data_from_numpy(np.array([7], dtype=np.int64)); x[1].set_data_from_numpy(np.array([1, 2, 3], dtype=np.int64)); "
        "r = c.infer('recommend', x, headers={'application': 'recommend'}); "
        "print(json.dumps([json.loads(i) for i in r.as_numpy('items')]))"
    )
    return f'.venv/bin/python -c "{code}"'


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


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def main() -> None:
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", default="configs/local.yaml")
    parser.add_argument("--ready-timeout", type=float, default=180)
    parser.add_argument("--metrics-port", type=int, default=8080, help="Ray's Prometheus endpoint")
    parser.add_argument("--dashboard-port", type=int, default=8265)
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
    # Supervised: a crashed Triton is restarted with backoff, and /readyz says why meanwhile.
    triton = Supervisor(TritonServer(paths.triton_repo, paths.triton_backends, log_file=paths.logs / "triton.log"),
                        state_dir=paths.supervised)
    print(f"==> starting Triton (log {triton.log_file}; restarted if it crashes)", flush=True)
    triton.start()
    print(f"    ready: gRPC {triton.grpc_url}, HTTP {triton.http_url}, metrics {triton.metrics_url}", flush=True)
    # The second v2 server, behind the ensemble app's scikit-learn node; supervised the same way.
    mlserver = Supervisor(MLServer(paths.mlserver_repo, log_file=paths.logs / "mlserver.log"), state_dir=paths.supervised)
    print(f"==> starting MLServer (log {mlserver.log_file}; restarted if it crashes)", flush=True)
    mlserver.start()
    print(f"    ready: gRPC {mlserver.grpc_url}, HTTP {mlserver.http_url}, metrics {mlserver.metrics_url}", flush=True)

    # A short private temp dir: Ray's socket paths must stay under 108 bytes,
    # and the user's other clusters keep their /tmp/ray.
    temp_dir = tempfile.mkdtemp(prefix="sg-ray-", dir="/tmp")
    env = private_cluster_env(local_ray_env(), temp_dir)
    env[STATE_DIR_ENV] = str(paths.supervised)
    print("==> starting a one-node Ray cluster", flush=True)
    head = start_ray_head(env, temp_dir, num_cpus=demo_head_cpus(), metrics_port=args.metrics_port,
                          dashboard_port=args.dashboard_port)
    ray_head, address = head.process, head.address
    serve_cli = Path(sys.executable).parent / "serve"
    print(f"==> serve run {args.config} (Ray at {address})", flush=True)
    serve_run = subprocess.Popen(
        [str(serve_cli), "run", "--address", address, str(config_path)],
        cwd=PROJECT_ROOT,
        env=env,
        start_new_session=True,
        preexec_fn=default_sigint,
    )
    try:
        readiness = wait_ready(f"{base}/recommend/readyz", serve_run, args.ready_timeout)
        apps = {app.name for app in schema.applications}
        models = wait_ready(f"{base}/v1/models", serve_run, args.ready_timeout) if "chat" in apps else None
        print("\n" + "=" * 72)
        print(f"recommend graph ready on {base}  ({readiness['checks']['ranker']['detail']})")
        print(f"  curl -s {base}/recommend -H 'content-type: application/json' \\\n    -d '{json.dumps(EXAMPLE)}'")
        print(f"  curl -s {base}/recommend/readyz     # readiness of Feast and Triton (the alias's version)")
        print(f"  the Open Inference Protocol (KServe v2) at {base}/recommend/v2, e.g. with tritonclient:\n    {oip_example(base)}")
        if schema.grpc_options.grpc_servicer_functions:
            print(f"  and over gRPC on 127.0.0.1:{schema.grpc_options.port} (Serve's gRPC proxy):\n"
                  f"    {oip_grpc_example(f'127.0.0.1:{schema.grpc_options.port}')}")
        if models:
            loaded = ", ".join(f"{m['id']} v{m['metadata']['registry']['version']}" for m in models["data"])
            print(f"OpenAI-compatible API on {base}/v1  ({loaded})")
            print(f"  curl -s {base}/v1/chat/completions -H 'content-type: application/json' \\\n    -d '{json.dumps(CHAT_EXAMPLE)}'")
        print(f"  OpenAPI docs: {base}/recommend/docs")
        print(f"  traces (the latest traced request's, as a tree; 5 % are traced, and any sent with -H 'traceparent: 00-<32 hex>-<16 hex>-01'):\n"
              f"    .venv/bin/python -m observability.tracing {temp_dir}/session_latest/logs/serve/spans")
        print(f"  payloads (one request in five, with its answer, features and scores, as CloudEvents in .local/payloads/recommend):\n"
              f"    .venv/bin/python -m cli.payloads {args.config} -n 5        # --json for whole records")
        print(f"  drift (the latest 300 logged requests vs the ranker's training data): send a shifted user mix, then read the flag:\n"
              f"    .venv/bin/python -m local_stack.traffic --url {base}/recommend --mix shifted\n"
              f"    curl -s http://127.0.0.1:{args.metrics_port}/metrics | grep -E 'ray_graph_(drift_detected|feature_drifted)'")
        if "ensemble" in apps:
            print(f"  ensemble (the ONNX ranker on Triton, a scikit-learn one on MLServer and a PyTorch one in its own\n"
                  f"  Serve deployment, averaged; `models` names each version):\n"
                  f"    curl -s {base}/ensemble -H 'content-type: application/json' -d '{json.dumps(EXAMPLE)}'")
        if "canary" in apps:
            print(f"  rollout (the canary app steps ranker@canary up against ranker@stable, 10/50/100 %, 30 s a step while\n"
                  f"  its guards hold, then moves @stable to it): send it traffic, and follow the record in the registry:\n"
                  f"    .venv/bin/python -m local_stack.traffic --url {base}/canary --requests 6000 --rate 40\n"
                  f"    .venv/bin/python -m cli.rollout {args.config}        # --restart: run it again")
        print(f"  metrics: http://127.0.0.1:{args.metrics_port}/metrics (ray_graph_node_latency_ms, ray_serve_*)")
        print(f"  Ray dashboard: http://127.0.0.1:{args.dashboard_port}; this cluster's token: {env['RAY_AUTH_TOKEN_PATH']}")
        print(f"    RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={env['RAY_AUTH_TOKEN_PATH']} serve status -a http://127.0.0.1:{args.dashboard_port}")
        print("  Ctrl-C stops Serve, Ray and Triton")
        print("=" * 72 + "\n", flush=True)
        serve_run.wait()
    except KeyboardInterrupt:
        pass
    finally:
        print("==> stopping", flush=True)
        # `serve run` is only a client of the demo's cluster, and the cluster
        # goes away with `ray start --block`: no `serve shutdown` round needed.
        stop_group(serve_run, timeout_s=10)
        stop_group(ray_head)
        stop_haproxy(env)
        shutil.rmtree(temp_dir, ignore_errors=True)
        mlserver.close()
        triton.close()


if __name__ == "__main__":
    main()
