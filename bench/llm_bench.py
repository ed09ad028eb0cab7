"""Benchmark LLM serving: the platform's chat app (ray.serve.llm on vLLM,
`serve run`) against vLLM's own OpenAI server started directly, same tiny
model from the registry, same engine settings, measured in the same run.

    .venv/bin/python bench/llm_bench.py [--seconds 20] [--rounds 2]

Streams completions (64 tokens, greedy, ignore_eos) with closed-loop clients
at concurrency 1, 8 and 16; prints output tokens/s and time-to-first-token
p50/p99, the CPU each server's processes spent per output token (bench/cpu.py:
the server's process and all its descendants, by process), and the
platform/direct ratios. The clients (aiohttp, parsing only
the chunks they need) share the servers' cores: each level prints their CPU.
With `--rounds N` the two servers are measured N times, alternating, each
round's ratios printed side by side: this machine's speed drifts within
minutes, and a ratio only holds for servers measured back to back.

Both servers run the engine code of this environment, this package's vLLM
plugins included (deployments/vllm_plugins.py). `SERVE_GRAPHS_VLLM_SPIN=1`
in the environment runs both with vLLM's own engine-core waiting instead.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import httpx
import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.cpu import spent, tree_cpu  # noqa: E402
from deployments.llm_engine import EngineArgs, LLMModelConfig, resolve  # noqa: E402
from local_stack.bootstrap import ensure  # noqa: E402
from local_stack.paths import PROJECT_ROOT  # noqa: E402
from local_stack.processes import default_sigint, stop_group  # noqa: E402
from local_stack.ray_env import local_ray_env, stop_haproxy  # noqa: E402
from local_stack.serve_configs import free_port, local_config  # noqa: E402

MODEL = "tiny-llama"
MAX_TOKENS = 64


@dataclass
class Result:
    concurrency: int
    requests: int
    tokens: int
    seconds: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    client_cpu: float  # the load generator's own CPU, in cores (it shares the machine)
    server_cpu_s: dict[str, float]  # CPU seconds of the server's processes during the level, by process

    @property
    def cpu_us_per_token(self) -> float:
        return sum(self.server_cpu_s.values()) / max(self.tokens, 1) * 1e6

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


async def stream_one(session: aiohttp.ClientSession, url: str, i: int) -> tuple[float, int]:
    """One streamed completion: (time to its first text, completion tokens).
    Only the chunks that matter are parsed (the first text, the usage), to
    keep the client's CPU, on the servers' cores, low."""
    body = {"model": MODEL, "prompt": f"Request {i}: a story about items", "max_tokens": MAX_TOKENS, "temperature": 0,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    ttft, tokens = None, 0
    async with session.post(url, json=body) as response:
        response.raise_for_status()
        async for line in response.content:
            if not line.startswith(b"data: {"):
                continue
            if ttft is None:
                chunk = json.loads(line[6:])
                if chunk.get("choices") and chunk["choices"][0].get("text"):
                    ttft = time.perf_counter() - started
            if b'"completion_tokens"' in line:
                usage = json.loads(line[6:]).get("usage")
                tokens = usage["completion_tokens"] if usage else tokens
    return (ttft if ttft is not None else float("nan")), tokens


async def run(url: str, concurrency: int, seconds: float, server_pid: int) -> Result:
    ttfts: list[float] = []
    tokens = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        await stream_one(session, url, -1)  # warm-up
        deadline = time.perf_counter() + seconds

        async def worker(w: int) -> None:
            nonlocal tokens
            i = 0
            while time.perf_counter() < deadline:
                ttft, n = await stream_one(session, url, w * 1000 + i)
                ttfts.append(ttft)
                tokens += n
                i += 1

        started, cpu_started, server_before = time.perf_counter(), time.process_time(), tree_cpu(server_pid)
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        server = spent(server_before, tree_cpu(server_pid))
    p50, p99 = np.nanpercentile(np.array(ttfts) * 1000, [50, 99])
    return Result(concurrency, len(ttfts), tokens, elapsed, float(p50), float(p99), cpu / elapsed, dict(server))


def wait_ok(url: str, process: subprocess.Popen, timeout_s: float = 400) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(2)
    raise TimeoutError(url)


def measure(name: str, url: str, levels: list[int], seconds: float, server_pid: int) -> list[Result]:
    results = []
    for concurrency in levels:
        r = asyncio.run(run(url, concurrency, seconds, server_pid))
        print(f"    {name} c={concurrency:<3} {r.tokens_per_s:7.1f} tok/s  TTFT p50 {r.ttft_p50_ms:7.1f} ms  p99 {r.ttft_p99_ms:7.1f} ms  "
              f"server CPU {r.cpu_us_per_token:.0f} us/token  ({r.requests} requests, client CPU {r.client_cpu:.0%} of a core)", flush=True)
        results.append(r)
    return results


def measure_direct(engine: EngineArgs, folder: str, logs: Path, levels: list[int], seconds: float) -> list[Result]:
    """vLLM's own OpenAI server, started for this measurement and stopped after it."""
    port = free_port()
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE=f"{engine.kv_cache_space_gib:g}", HF_HUB_OFFLINE="1")
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", folder, "--served-model-name", MODEL,
               "--host", "127.0.0.1", "--port", str(port), "--dtype", engine.dtype, "--max-model-len", str(engine.max_model_len),
               "--max-num-seqs", str(engine.max_num_seqs), "--seed", str(engine.seed)]
    command += ["--enforce-eager"] if engine.enforce_eager else []
    direct = subprocess.Popen(command, env=env, stdout=open(logs / "vllm-direct.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_ok(f"http://127.0.0.1:{port}/v1/models", direct)
        return measure("vllm-direct", f"http://127.0.0.1:{port}/v1/completions", levels, seconds, direct.pid)
    finally:
        stop_group(direct, signal.SIGTERM)


def measure_platform(config: dict, logs: Path, levels: list[int], seconds: float) -> list[Result]:
    """The chat app on a fresh local cluster (`serve run`, shipped Ray settings), stopped after."""
    with tempfile.TemporaryDirectory() as tmp:
        config_file = Path(tmp) / "chat.yaml"
        config_file.write_text(yaml.safe_dump(config))
        env = dict(local_ray_env(), RAY_AUTH_MODE="disabled")
        serve_run = [str(Path(sys.executable).parent / "serve"), "run", str(config_file)]
        platform = subprocess.Popen(serve_run, cwd=PROJECT_ROOT, env=env,
                                    stdout=open(logs / "llm-platform.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True,
                                    preexec_fn=default_sigint)
        base = f"http://127.0.0.1:{config['http_options']['port']}/v1"
        try:
            wait_ok(f"{base}/models", platform)
            return measure("platform", f"{base}/completions", levels, seconds, platform.pid)
        finally:
            stop_group(platform, signal.SIGINT, timeout_s=40)
            stop_haproxy(env)


def print_round(rows: dict[str, list[Result]]) -> None:
    direct_by_c = {r.concurrency: r for r in rows["vllm-direct"]}
    print("| server | concurrency | output tok/s | TTFT p50 ms | TTFT p99 ms | server CPU us/token | tok/s vs direct | TTFT p50 overhead | CPU/token vs direct |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, results in rows.items():
        for r in results:
            d = direct_by_c[r.concurrency]
            print(f"| {name} | {r.concurrency} | {r.tokens_per_s:.0f} | {r.ttft_p50_ms:.1f} | {r.ttft_p99_ms:.1f} | {r.cpu_us_per_token:.0f} | "
                  f"{r.tokens_per_s / d.tokens_per_s:.2f}x | {r.ttft_p50_ms - d.ttft_p50_ms:+.1f} ms | {r.cpu_us_per_token / d.cpu_us_per_token:.2f}x |")


def print_cpu(rows: dict[str, list[Result]]) -> None:
    """Where each server's CPU per output token goes, by process, at the highest concurrency."""
    print("\n| server | process | CPU us per output token |")
    print("|---|---|---|")
    for name, results in rows.items():
        r = results[-1]
        for label, seconds in sorted(r.server_cpu_s.items(), key=lambda kv: -kv[1]):
            if seconds / max(r.tokens, 1) * 1e6 >= 0.5:
                print(f"| {name} (c={r.concurrency}) | {label} | {seconds / max(r.tokens, 1) * 1e6:.1f} |")
        print(f"| {name} (c={r.concurrency}) | **total** | **{r.cpu_us_per_token:.1f}** |")


def print_summary(rounds: list[dict[str, list[Result]]]) -> None:
    """Each round's ratios side by side: a round measures both servers back to
    back, so a ratio is only as good as the host's speed was steady in it."""
    print("\n| concurrency | " + " | ".join(f"round {i + 1} tok/s vs direct, TTFT p50 overhead" for i in range(len(rounds))) + " |")
    print("|---|" + "---|" * len(rounds))
    for i, d in enumerate(rounds[0]["vllm-direct"]):
        cells = []
        for rows in rounds:
            direct, platform = rows["vllm-direct"][i], rows["platform"][i]
            cells.append(f"{platform.tokens_per_s / direct.tokens_per_s:.2f}x, {platform.ttft_p50_ms - direct.ttft_p50_ms:+.1f} ms")
        print(f"| {d.concurrency} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure vLLM direct then the platform this many times, alternating (cancels a host whose speed drifts)")
    args = parser.parse_args()
    paths = ensure()
    logs = paths.logs / "bench"
    logs.mkdir(parents=True, exist_ok=True)
    config = local_config(free_port(), "127.0.0.1:1", llm=MODEL, only={"chat"})
    engine = LLMModelConfig.model_validate(config["applications"][0]["args"]["model"]).engine
    folder = resolve(LLMModelConfig(name=MODEL)).path

    rounds: list[dict[str, list[Result]]] = []
    for i in range(args.rounds):
        print(f"==> round {i + 1}: vLLM's OpenAI server, started directly", flush=True)
        direct = measure_direct(engine, folder, logs, args.levels, args.seconds)
        print(f"==> round {i + 1}: platform: serve run (chat app, ray.serve.llm)", flush=True)
        rounds.append({"vllm-direct": direct, "platform": measure_platform(config, logs, args.levels, args.seconds)})

    waiting = "vLLM's own (SERVE_GRAPHS_VLLM_SPIN=1)" if os.environ.get("SERVE_GRAPHS_VLLM_SPIN") == "1" else "this package's plugin"
    print(f"\nstreamed completions, {MAX_TOKENS} tokens, greedy, {MODEL} ({engine.dtype}, max_num_seqs {engine.max_num_seqs}); "
          f"{os.cpu_count()} cores, {args.seconds:g} s per level; engine-core waiting: {waiting}")
    for i, rows in enumerate(rounds):
        print(f"\nround {i + 1}")
        print_round(rows)
        print_cpu(rows)
    if len(rounds) > 1:
        print_summary(rounds)


if __name__ == "__main__":
    main()
