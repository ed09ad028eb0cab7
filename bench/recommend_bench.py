"""Benchmark `/recommend`: the platform (`serve run` of configs/local.yaml)
against a baseline measured in the same run (bench/baseline_app.py: plain
FastAPI under uvicorn calling the same Feast store and Triton model).

    make bench                       # or: .venv/bin/python bench/recommend_bench.py --seconds 10

Prints p50/p95/p99 and requests/s at concurrency 1, 8 and 32 for each, the
platform/baseline ratios, and the CPU each server's processes (and Triton)
spent per request, by process (bench/cpu.py): what a slower or busier host
does not change the way it changes throughput. Each platform variant is a
separate `serve run` with its own environment and config: the shipped one
(`platform`), the same with batching across requests off
(`platform-no-batching`), and, with
`--variants`, the shipped one called through the Open Inference Protocol's
REST route (`platform-v2-rest`) and Ray Serve's defaults without the fast
ingress (`serve-defaults`, `serve-throughput-optimized`), so what each option
changes is visible. The baseline also runs under two uvicorn workers
(`baseline-2-workers`, a row for reference: the shipped platform scales its
ingress to two replicas under load, one per core; the ratios stay against
one worker). Every level runs `--warmup` seconds unmeasured first.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.cpu import spent, tree_cpu  # noqa: E402
from bench.figures import Result, payload, run, v2_payload  # noqa: E402
from local_stack.bootstrap import ensure  # noqa: E402
from local_stack.paths import PROJECT_ROOT, StackPaths  # noqa: E402
from local_stack.processes import default_sigint, stop_group  # noqa: E402
from local_stack.ray_env import local_ray_env, stop_haproxy  # noqa: E402
from local_stack.triton_server import TritonServer  # noqa: E402
from local_stack.serve_configs import free_port, local_config  # noqa: E402


SHIPPED = ("platform", "platform-no-batching")

# Variants that call the graph through the Open Inference Protocol's REST
# route instead of its JSON route (the same serve run otherwise).
V2 = "/v2/models/recommend/infer"


def variants() -> dict[str, tuple[dict[str, str], bool]]:
    """Name -> (environment of the Serve run, batching across requests on)."""
    return {
        "platform": (local_ray_env(fast_ingress=True), True),
        "platform-v2-rest": (local_ray_env(fast_ingress=True), True),
        "platform-no-batching": (local_ray_env(fast_ingress=True), False),
        "serve-defaults": (local_ray_env(fast_ingress=False), True),
        "serve-throughput-optimized": (local_ray_env(fast_ingress=False) | {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}, True),
    }


def without_batching(config: dict) -> dict:
    """The config with every node's `batch` removed (in place, returned)."""
    for app in config["applications"]:
        for node in app.get("args", {}).get("graph", {}).get("nodes", {}).values():
            node.pop("batch", None)
    return config


def wait_ok(url: str, process: subprocess.Popen, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            if httpx.post(url, json={"user_id": 1, "item_ids": [1, 2], "k": 1}, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(url)


# Concurrency level -> CPU microseconds per successful request, by process
# (the server's own process tree, and `triton`), per server.
CPU: dict[str, dict[int, dict[str, float]]] = {}


def measure(name: str, url: str, levels: list[int], seconds: float, pids: dict[str, int], warmup_s: float = 0.0) -> list[Result]:
    """Each level's figures, after `warmup_s` of the same load, and the CPU
    that `pids`' process trees spent on it (recorded in CPU[name])."""
    results = []
    make_payload = v2_payload if url.endswith(V2) else payload
    for concurrency in levels:
        if warmup_s > 0:  # the level's load first, unmeasured: the ingress autoscales under load
            asyncio.run(run(url, concurrency, warmup_s, make_payload=make_payload))
        before = {label: tree_cpu(pid) for label, pid in pids.items()}
        client_before = time.process_time()
        result = asyncio.run(run(url, concurrency, seconds, make_payload=make_payload))
        client_us = (time.process_time() - client_before) / max(result.ok, 1) * 1e6
        used: dict[str, float] = {}
        for label, pid in pids.items():
            for process, cpu_s in spent(before[label], tree_cpu(pid)).items():
                key = "triton" if label == "triton" else process
                used[key] = used.get(key, 0.0) + cpu_s / max(result.ok, 1) * 1e6
        CPU.setdefault(name, {})[concurrency] = used
        print(
            f"    c={concurrency:<3} p50 {result.p50_ms:6.2f} ms  p95 {result.p95_ms:6.2f}  p99 {result.p99_ms:6.2f}  "
            f"{result.rps:7.1f} req/s  ({result.ok} ok, {result.failed} failed)  CPU {sum(used.values()):.0f} us/request "
            f"(the load generator: {client_us:.0f})",
            flush=True,
        )
        results.append(result)
    return results


def baseline_name(workers: int) -> str:
    return "baseline" if workers == 1 else f"baseline-{workers}-workers"


def run_baseline(paths: StackPaths, triton: TritonServer, levels, seconds, log: Path, workers: int = 1,
                 warmup_s: float = 0.0) -> list[Result]:
    """The hand-written app under `workers` uvicorn processes (1: the ratios' base)."""
    port = free_port()
    env = dict(os.environ, BASELINE_TRITON=triton.grpc_url, BASELINE_STACK=str(paths.root), FEAST_USAGE="False")
    command = [sys.executable, "-m", "uvicorn", "bench.baseline_app:app", "--host", "127.0.0.1", "--port", str(port),
               "--log-level", "warning", "--no-access-log", "--workers", str(workers)]
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}/recommend"
        wait_ok(url, process)
        return measure(baseline_name(workers), url, levels, seconds, {"server": process.pid, "triton": triton.process.pid}, warmup_s)
    finally:
        stop_group(process, signal.SIGTERM)


def run_platform(name: str, triton: TritonServer, env: dict[str, str], batching: bool, levels, seconds, tmp: Path, log: Path,
                 warmup_s: float = 0.0) -> list[Result]:
    port = free_port()
    config_file = tmp / f"serve-{port}.yaml"
    config = local_config(port, triton.grpc_url, only={"recommend"})
    config_file.write_text(yaml.safe_dump(config if batching else without_batching(config)))
    env = dict(env, RAY_AUTH_MODE="disabled")
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "serve"), "run", str(config_file)],
        cwd=PROJECT_ROOT, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True,
        preexec_fn=default_sigint,
    )
    try:
        url = f"http://127.0.0.1:{port}/recommend"
        wait_ok(url, process)
        if name.endswith("-v2-rest"):
            url += V2
        return measure(name, url, levels, seconds, {"server": process.pid, "triton": triton.process.pid}, warmup_s)
    finally:
        stop_group(process, signal.SIGINT, timeout_s=40)  # serve run shuts its own cluster down
        stop_haproxy(env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="load time per concurrency level")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--warmup", type=float, default=20.0,
                        help="seconds of each level's load before it is measured, for every server: the steady "
                        "state (the shipped ingress autoscales from one replica to two under load, and a new "
                        "replica takes 10-15 s to decide on and start on this host)")
    parser.add_argument("--variants", nargs="+", default=list(SHIPPED), choices=list(variants()),
                        help=f"platform variants to run (default: {' '.join(SHIPPED)})")
    parser.add_argument("--baseline-workers", type=int, nargs="*", default=[2],
                        help="also run the baseline under this many uvicorn workers (a row for reference; "
                        "the ratios stay against one worker, the app as a user writes it)")
    args = parser.parse_args()

    paths = ensure()
    tmp = Path(tempfile.mkdtemp(prefix="sg-bench-"))
    logs = paths.logs / "bench"
    logs.mkdir(parents=True, exist_ok=True)
    triton = TritonServer(paths.triton_repo, paths.triton_backends, free_port(), free_port(), free_port(), log_file=logs / "triton.log")
    triton.start()
    table: dict[str, list[Result]] = {}
    try:
        print("==> baseline: FastAPI + uvicorn calling Feast and Triton directly", flush=True)
        table["baseline"] = run_baseline(paths, triton, args.levels, args.seconds, logs / "baseline.log", warmup_s=args.warmup)
        for workers in args.baseline_workers:
            print(f"==> {baseline_name(workers)}: the same app under {workers} uvicorn workers", flush=True)
            table[baseline_name(workers)] = run_baseline(
                paths, triton, args.levels, args.seconds, logs / f"{baseline_name(workers)}.log", workers, args.warmup
            )
        all_variants = variants()
        for name in args.variants:
            print(f"==> platform: serve run configs/local.yaml [{name}]", flush=True)
            env, batching = all_variants[name]
            try:
                table[name] = run_platform(
                    name, triton, env, batching, args.levels, args.seconds, tmp, logs / f"{name}.log", args.warmup
                )
            except (RuntimeError, TimeoutError) as error:
                print(f"    failed to start: {error} (log {logs / f'{name}.log'})", flush=True)
    finally:
        triton.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    base = {r.concurrency: r for r in table["baseline"]}
    print(f"\n/recommend, 20 candidates, k=5; {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, "
          f"{platform.processor() or platform.machine()}, {args.seconds:g} s per level after {args.warmup:g} s of warm-up")
    print("| server | concurrency | p50 ms | p95 ms | p99 ms | req/s | p50 vs baseline | req/s vs baseline |")
    print("|---|---|---|---|---|---|---|---|")
    for name, results in table.items():
        for r in results:
            b = base[r.concurrency]
            print(
                f"| {name} | {r.concurrency} | {r.p50_ms:.2f} | {r.p95_ms:.2f} | {r.p99_ms:.2f} | {r.rps:.0f} | "
                f"{r.p50_ms / b.p50_ms:.2f}x | {r.rps / b.rps:.2f}x |"
            )
    print_cpu(max(args.levels))


def print_cpu(concurrency: int) -> None:
    """Where each server's CPU per request goes, by process, at one concurrency."""
    base = sum(CPU["baseline"][concurrency].values())
    print(f"\n| server (c={concurrency}) | process | CPU us per request |")
    print("|---|---|---|")
    for name, levels in CPU.items():
        used = levels[concurrency]
        for process, us in sorted(used.items(), key=lambda kv: -kv[1]):
            if us >= 1:
                print(f"| {name} | {process} | {us:.0f} |")
        print(f"| {name} | **total** | **{sum(used.values()):.0f}** ({sum(used.values()) / base:.2f}x baseline) |")


if __name__ == "__main__":
    main()
