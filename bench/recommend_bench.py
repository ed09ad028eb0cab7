"""Benchmark `/recommend`: the platform (`serve run` of configs/local.yaml)
against a baseline measured in the same run (bench/baseline_app.py: plain
FastAPI under uvicorn calling the same Feast store and Triton model).

    make bench                       # or: .venv/bin/python bench/recommend_bench.py --seconds 9

Prints p50/p95/p99 and requests/s at concurrency 1, 8 and 32 for each, the
platform/baseline ratios, and the CPU each server's processes (and Triton)
spent per request, by process (bench/cpu.py): what a slower or busier host
does not change the way it changes throughput.

The baseline stays up for the whole run, and each platform variant is
measured in alternation with it: every level's measured time is cut into
slices, baseline and platform in turn, so that the drift of a shared host
(10 % or more within minutes here) weighs on both alike instead of on
whichever ran in a slow minute. Each platform variant is a separate
`serve run` with its own environment and config: the shipped one
(`platform`), the same with batching across requests off
(`platform-no-batching`), and, with `--variants`, the shipped one called
through the Open Inference Protocol's REST route (`platform-v2-rest`) or
its gRPC service on Serve's gRPC proxy (`platform-v2-grpc`), and Ray Serve's defaults without the fast ingress (`serve-defaults`,
`serve-throughput-optimized`), so what each option changes is visible. The
baseline also runs under two uvicorn workers alongside the first variant
(`baseline-2-workers`, a row for reference: the shipped platform scales its
ingress to two replicas under load, one per core; the ratios stay against
one worker). Every level runs `--warmup` seconds unmeasured first, on every
server.
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
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.cpu import spent, tree_cpu  # noqa: E402
from bench.figures import Result, grpc_payload, payload, run, run_outcomes, v2_payload  # noqa: E402
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
        "platform-v2-grpc": (local_ray_env(fast_ingress=True), True),
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


# Per server: concurrency level -> CPU microseconds per successful request,
# by process (the server's own process tree, and `triton`).
CpuTable = dict[str, dict[int, dict[str, float]]]


@dataclass
class Server:
    """One server under test: where to send requests, and whose CPU to count."""
    name: str
    url: str
    pids: dict[str, int]

    @property
    def make_payload(self):
        if self.url.startswith("grpc://"):
            return grpc_payload
        return v2_payload if self.url.endswith(V2) else payload


def measure_interleaved(servers: list[Server], levels: list[int], seconds: float, warmup_s: float = 0.0,
                        slices: int = 3) -> tuple[dict[str, list[Result]], CpuTable]:
    """Each server's figures at each level, measured in `slices` alternating
    slices of `seconds / slices` (server order reversed every other slice), so
    that a host that slows down or speeds up during the run (this one does, by
    10 % or more) weighs on every server alike and the ratios stay fair.
    Each level first runs `warmup_s` of the same load on every server,
    unmeasured (the platform's ingress autoscales under load). Only the
    server being measured has load; the others idle. CPU is counted per
    server over its own slices only."""
    results: dict[str, list[Result]] = {server.name: [] for server in servers}
    cpu: CpuTable = {server.name: {} for server in servers}
    for concurrency in levels:
        if warmup_s > 0:
            for server in servers:
                asyncio.run(run(server.url, concurrency, warmup_s, make_payload=server.make_payload))
        outcomes: dict[str, list] = {server.name: [] for server in servers}
        elapsed = dict.fromkeys(outcomes, 0.0)
        client_s = dict.fromkeys(outcomes, 0.0)
        used: dict[str, Counter] = {name: Counter() for name in outcomes}
        for index in range(slices):
            for server in servers if index % 2 == 0 else servers[::-1]:
                before = {label: tree_cpu(pid) for label, pid in server.pids.items()}
                client_before = time.process_time()
                part, part_s = asyncio.run(run_outcomes(
                    server.url, concurrency, seconds / slices, make_payload=server.make_payload, seed=index))
                client_s[server.name] += time.process_time() - client_before
                outcomes[server.name] += part
                elapsed[server.name] += part_s
                for label, pid in server.pids.items():
                    for process, cpu_s in spent(before[label], tree_cpu(pid)).items():
                        used[server.name]["triton" if label == "triton" else process] += cpu_s
        for server in servers:
            result = Result.of(concurrency, outcomes[server.name], elapsed[server.name])
            per_request = {process: cpu_s / max(result.ok, 1) * 1e6 for process, cpu_s in used[server.name].items()}
            cpu[server.name][concurrency] = per_request
            print(
                f"    {server.name:<22} c={concurrency:<3} p50 {result.p50_ms:6.2f} ms  p95 {result.p95_ms:6.2f}  "
                f"p99 {result.p99_ms:6.2f}  {result.rps:7.1f} req/s  ({result.ok} ok, {result.failed} failed)  "
                f"CPU {sum(per_request.values()):.0f} us/request "
                f"(the load generator: {client_s[server.name] / max(result.ok, 1) * 1e6:.0f})",
                flush=True,
            )
            results[server.name].append(result)
    return results, cpu


def baseline_name(workers: int) -> str:
    return "baseline" if workers == 1 else f"baseline-{workers}-workers"


@contextmanager
def baseline_server(paths: StackPaths, triton: TritonServer, log: Path, workers: int = 1) -> Iterator[Server]:
    """The hand-written app under `workers` uvicorn processes (1: the ratios' base), up."""
    port = free_port()
    env = dict(os.environ, BASELINE_TRITON=triton.grpc_url, BASELINE_STACK=str(paths.root), FEAST_USAGE="False")
    command = [sys.executable, "-m", "uvicorn", "bench.baseline_app:app", "--host", "127.0.0.1", "--port", str(port),
               "--log-level", "warning", "--no-access-log", "--workers", str(workers)]
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}/recommend"
        wait_ok(url, process)
        yield Server(baseline_name(workers), url, {"server": process.pid, "triton": triton.process.pid})
    finally:
        stop_group(process, signal.SIGTERM)


@contextmanager
def platform_server(name: str, triton: TritonServer, env: dict[str, str], batching: bool, tmp: Path,
                    log: Path) -> Iterator[Server]:
    """`serve run` of the recommend app of configs/local.yaml as variant `name`, up."""
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
        if name.endswith("-v2-grpc"):  # Serve's gRPC proxy, the graph's GRPCInferenceService
            url = f"grpc://127.0.0.1:{config['grpc_options']['port']}"
        yield Server(name, url, {"server": process.pid, "triton": triton.process.pid})
    finally:
        stop_group(process, signal.SIGINT, timeout_s=40)  # serve run shuts its own cluster down
        stop_haproxy(env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=9.0, help="measured load time per server and concurrency level")
    parser.add_argument("--slices", type=int, default=3,
                        help="the measured time of each level is cut into this many slices, alternating between "
                        "the servers of a group, so that the host's drift weighs on all of them alike")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--warmup", type=float, default=20.0,
                        help="seconds of each level's load before it is measured, for every server: the steady "
                        "state (the shipped ingress autoscales from one replica to two under load, and a new "
                        "replica takes 10-15 s to decide on and start on this host)")
    parser.add_argument("--variants", nargs="+", default=list(SHIPPED), choices=list(variants()),
                        help=f"platform variants to run (default: {' '.join(SHIPPED)})")
    parser.add_argument("--baseline-workers", type=int, nargs="*", default=[2],
                        help="also run the baseline under this many uvicorn workers, alongside the first variant "
                        "(a row for reference; the ratios stay against one worker, the app as a user writes it)")
    args = parser.parse_args()

    paths = ensure()
    tmp = Path(tempfile.mkdtemp(prefix="sg-bench-"))
    logs = paths.logs / "bench"
    logs.mkdir(parents=True, exist_ok=True)
    triton = TritonServer(paths.triton_repo, paths.triton_backends, free_port(), free_port(), free_port(), log_file=logs / "triton.log")
    triton.start()
    # One group per platform variant: the variant, measured in alternation with
    # the baseline (and, with the first, the baseline's other worker counts).
    groups: list[tuple[dict[str, list[Result]], CpuTable]] = []
    try:
        with ExitStack() as baselines:
            base = baselines.enter_context(baseline_server(paths, triton, logs / "baseline.log"))
            others = [baselines.enter_context(baseline_server(paths, triton, logs / f"{baseline_name(w)}.log", w))
                      for w in args.baseline_workers]
            all_variants = variants()
            for index, name in enumerate(args.variants):
                print(f"==> platform: serve run configs/local.yaml [{name}], alternating with the baseline "
                      "(FastAPI + uvicorn calling Feast and Triton directly)", flush=True)
                env, batching = all_variants[name]
                try:
                    with platform_server(name, triton, env, batching, tmp, logs / f"{name}.log") as server:
                        group = [base] + (others if index == 0 else []) + [server]
                        groups.append(measure_interleaved(group, args.levels, args.seconds, args.warmup, args.slices))
                except (RuntimeError, TimeoutError) as error:
                    print(f"    failed to start: {error} (log {logs / f'{name}.log'})", flush=True)
    finally:
        triton.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\n/recommend, 20 candidates, k=5; {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, "
          f"{platform.processor() or platform.machine()}, {args.seconds:g} s per level and server in {args.slices} "
          f"alternating slices, after {args.warmup:g} s of warm-up")
    print("| server | concurrency | p50 ms | p95 ms | p99 ms | req/s | p50 vs baseline | req/s vs baseline |")
    print("|---|---|---|---|---|---|---|---|")
    for index, (group, _) in enumerate(groups):
        by_level = {r.concurrency: r for r in group["baseline"]}
        for name, results in group.items():
            for r in results:
                b = by_level[r.concurrency]
                print(
                    f"| {label(name, index, group)} | {r.concurrency} | {r.p50_ms:.2f} | {r.p95_ms:.2f} | "
                    f"{r.p99_ms:.2f} | {r.rps:.0f} | {r.p50_ms / b.p50_ms:.2f}x | {r.rps / b.rps:.2f}x |"
                )
    print_cpu(groups, max(args.levels))


def label(name: str, index: int, group: dict) -> str:
    """A server's name in the tables; a later group's baseline says whose it is."""
    return name if index == 0 or name != "baseline" else f"baseline (alongside {list(group)[-1]})"


def print_cpu(groups: list[tuple[dict[str, list[Result]], CpuTable]], concurrency: int, least_us: float = 10) -> None:
    """Where each server's CPU per request goes, by process, at one
    concurrency; processes under `least_us` are summed in one row."""
    print(f"\n| server (c={concurrency}) | process | CPU us per request |")
    print("|---|---|---|")
    for index, (group, cpu) in enumerate(groups):
        base = sum(cpu["baseline"][concurrency].values())
        for name, levels in cpu.items():
            used = levels[concurrency]
            small = [us for us in used.values() if us < least_us]
            for process, us in sorted(used.items(), key=lambda kv: -kv[1]):
                if us >= least_us:
                    print(f"| {label(name, index, group)} | {process} | {us:.0f} |")
            if small:
                print(f"| {label(name, index, group)} | {len(small)} others under {least_us:g} us each | {sum(small):.0f} |")
            total = sum(used.values())
            print(f"| {label(name, index, group)} | **total** | **{total:.0f}** ({total / base:.2f}x baseline) |")


if __name__ == "__main__":
    main()
