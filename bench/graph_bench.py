"""Benchmark the declarative recommend graph (configs/local.yaml's recommend graph,
no LLM explanation) under Serve, four ways in one cluster, same run:

- inline: every node in the ingress replica (the default placement);
- deployments: every node its own Serve deployment (a handle hop per node);
- split: the ranker as a sticky 50/50 split between ranker@champion and
  ranker@challenger (both inline);
- shadow: ranker@champion answers, ranker@challenger mirrored in the background.

    .venv/bin/python bench/graph_bench.py [--seconds 8] [--levels 1 32]

Prints p50/p95/p99 and requests/s per variant and concurrency, and each
variant's ratios against `inline` measured in the same run.
"""
from __future__ import annotations

import argparse
import copy
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.figures import Result  # noqa: E402
from bench.recommend_bench import measure, wait_ok  # noqa: E402
from local_stack.bootstrap import ensure  # noqa: E402
from local_stack.paths import PROJECT_ROOT  # noqa: E402
from local_stack.processes import default_sigint, stop_group  # noqa: E402
from local_stack.ray_env import local_ray_env, stop_haproxy  # noqa: E402
from local_stack.serve_configs import free_port  # noqa: E402
from local_stack.triton_server import TritonServer  # noqa: E402

GRAPH = PROJECT_ROOT / "configs" / "local.yaml"


def base_app(triton_url: str) -> dict:
    """The recommend graph without its LLM step, its ranker on this Triton."""
    (app,) = [a for a in yaml.safe_load(GRAPH.read_text())["applications"] if a["name"] == "recommend"]
    app.pop("deployments", None)
    graph = app["args"]["graph"]
    graph["nodes"].pop("explain")
    graph["request"].pop("explain")
    graph["output"].pop("explanation")
    graph["flow"]["steps"] = [s for s in graph["flow"]["steps"] if s.get("kind") == "node"]
    graph["nodes"]["ranker"]["config"]["url"] = triton_url
    return app


def _with_variants(app: dict, name: str, ranker_step: dict) -> dict:
    """The ranker node as two nodes, champion and challenger, behind `ranker_step` (slot `ranker`)."""
    app = copy.deepcopy(app)
    graph = app["args"]["graph"]
    ranker = graph["nodes"].pop("ranker")
    graph["nodes"]["champion"] = ranker
    graph["nodes"]["challenger"] = copy.deepcopy(ranker)
    graph["nodes"]["challenger"]["config"]["alias"] = "challenger"
    graph["flow"]["steps"] = [ranker_step if s.get("node") == "ranker" else s for s in graph["flow"]["steps"]]
    app["name"], app["route_prefix"] = name, f"/bench/{name}"
    return app


def variants(triton_url: str) -> dict[str, dict]:
    inline = base_app(triton_url)
    inline["name"], inline["route_prefix"] = "inline", "/bench/inline"
    apart = copy.deepcopy(inline)
    apart["name"], apart["route_prefix"] = "deployments", "/bench/deployments"
    for node in apart["args"]["graph"]["nodes"].values():
        node.update(placement="deployment", num_replicas=1, max_ongoing_requests=64)
    split = _with_variants(inline, "split", {
        "kind": "split", "name": "ranker", "sticky_key": "request.user_id",
        "variants": [{"name": "champion", "weight": 0.5, "then": {"kind": "node", "node": "champion"}},
                     {"name": "challenger", "weight": 0.5, "then": {"kind": "node", "node": "challenger"}}],
    })
    shadow = _with_variants(inline, "shadow", {
        "kind": "shadow", "name": "ranker",
        "primary": {"kind": "node", "node": "champion"}, "candidate": {"kind": "node", "node": "challenger"},
    })
    apps = (inline, apart, split, shadow)
    # Logical CPUs only: `serve run` starts a cluster with this machine's 2, and 7 replicas share them anyway.
    for app in apps:
        app["deployments"] = [{"name": "GraphIngress", "ray_actor_options": {"num_cpus": 0.1}}]
    for node in apart["args"]["graph"]["nodes"].values():
        node["ray_actor_options"] = {"num_cpus": 0.1}
    return {app["name"]: app for app in apps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="load time per concurrency level")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 32])
    args = parser.parse_args()

    paths = ensure()
    tmp = Path(tempfile.mkdtemp(prefix="sg-bench-"))
    logs = paths.logs / "bench"
    logs.mkdir(parents=True, exist_ok=True)
    triton = TritonServer(paths.triton_repo, paths.triton_backends, free_port(), free_port(), free_port(), log_file=logs / "triton-graph.log")
    triton.start()
    port = free_port()
    apps = variants(triton.grpc_url)
    config = {"proxy_location": "EveryNode", "http_options": {"host": "127.0.0.1", "port": port, "request_timeout_s": 30},
              "applications": list(apps.values())}
    config_file = tmp / "graphs.yaml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    env = dict(local_ray_env(), RAY_AUTH_MODE="disabled")
    process = subprocess.Popen([str(Path(sys.executable).parent / "serve"), "run", str(config_file)], cwd=PROJECT_ROOT, env=env,
                               stdout=open(logs / "graph-bench.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True,
                               preexec_fn=default_sigint)
    table: dict[str, list[Result]] = {}
    try:
        for name, app in apps.items():
            url = f"http://127.0.0.1:{port}{app['route_prefix']}"
            wait_ok(url, process, timeout_s=300)
            print(f"==> {name}", flush=True)
            table[name] = measure(url, args.levels, args.seconds)
    finally:
        stop_group(process, signal.SIGINT, timeout_s=40)
        stop_haproxy(env)
        triton.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    base = {r.concurrency: r for r in table["inline"]}
    print(f"\nrecommend graph (Feast -> Triton -> top-k), 20 candidates, k=5; {os.cpu_count()} cores, "
          f"{platform.processor() or platform.machine()}, {args.seconds:g} s per level")
    print("| graph | concurrency | p50 ms | p99 ms | req/s | p50 vs inline | p99 vs inline | req/s vs inline |")
    print("|---|---|---|---|---|---|---|---|")
    for name, results in table.items():
        for r in results:
            b = base[r.concurrency]
            print(f"| {name} | {r.concurrency} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.rps:.0f} | "
                  f"{r.p50_ms / b.p50_ms:.2f}x | {r.p99_ms / b.p99_ms:.2f}x | {r.rps / b.rps:.2f}x |")


if __name__ == "__main__":
    main()
