"""Demo traffic for the recommend graph, in the user mix the ranker was
trained on or in a shifted one that the drift monitor notices.

    .venv/bin/python -m local_stack.traffic --mix normal
    .venv/bin/python -m local_stack.traffic --mix shifted      # older users, fond of genre 0
    .venv/bin/python -m local_stack.traffic --url http://127.0.0.1:8000/canary --requests 6000 --rate 40

`normal` draws users uniformly, as the training interactions did; `shifted`
draws only from a segment of them (age over 0.55, taste for genre 0 over
0.35: about one user in eight), which moves the user features' and the
scores' distributions while the items stay as they were. Each request asks
for 20 consecutive candidates and no LLM explanation.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import random
from pathlib import Path

import pandas as pd

from local_stack.paths import StackPaths

MIXES = ("normal", "shifted")
N_CANDIDATES = 20


def users_of(mix: str, data: Path) -> list[int]:
    """The user ids a mix draws from."""
    users = pd.read_parquet(data / "users.parquet")
    if mix == "shifted":
        users = users[(users["age"] > 0.55) & (users["taste_0"] > 0.35)]
    return users["user_id"].astype(int).tolist()


def bodies(mix: str, count: int, data: Path, seed: int = 0) -> list[dict]:
    """`count` /recommend bodies of the mix (seeded: the same run sends the same requests)."""
    rng = random.Random(seed)
    users = users_of(mix, data)
    n_items = len(pd.read_parquet(data / "items.parquet"))
    found = []
    for _ in range(count):
        start = rng.randint(1, n_items - N_CANDIDATES + 1)
        found.append({"user_id": rng.choice(users), "item_ids": list(range(start, start + N_CANDIDATES)), "k": 5,
                      "explain": False})
    return found


async def send(url: str, requests: list[dict], concurrency: int = 4, timeout_s: float = 30,
               rate: float | None = None) -> collections.Counter:
    """POST each body, `concurrency` at a time (at most `rate` a second when
    given); the answers' statuses counted."""
    import aiohttp

    statuses: collections.Counter = collections.Counter()
    queue = collections.deque(requests)
    loop = asyncio.get_running_loop()
    next_at = loop.time()

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal next_at
        while queue:
            body = queue.popleft()
            if rate:
                wait, next_at = next_at - loop.time(), max(next_at, loop.time()) + 1.0 / rate
                if wait > 0:
                    await asyncio.sleep(wait)
            try:
                async with session.post(url, json=body) as response:
                    await response.read()
                    statuses[response.status] += 1
            except (aiohttp.ClientError, asyncio.TimeoutError) as error:
                statuses[type(error).__name__] += 1

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
        await asyncio.gather(*[client(session) for _ in range(concurrency)])
    return statuses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000/recommend")
    parser.add_argument("--mix", choices=MIXES, default="normal")
    parser.add_argument("--requests", type=int, default=2000,
                        help="how many (configs/local.yaml logs one in five, and its drift window is 300 logged requests)")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rate", type=float, help="requests per second at most (default: as fast as answered)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", type=Path, default=StackPaths().root, help="the local stack (its demo data)")
    args = parser.parse_args()
    statuses = asyncio.run(send(args.url, bodies(args.mix, args.requests, StackPaths(args.root).data, args.seed), args.concurrency,
                                rate=args.rate))
    print(f"{args.requests} requests of the {args.mix} mix to {args.url}: " + ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items(), key=str)))


if __name__ == "__main__":
    main()
