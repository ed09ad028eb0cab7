"""Weighted splits are sticky: a stable hash of the key picks the variant, so a
user keeps their variant across requests, replicas and restarts."""
import asyncio
import subprocess
import sys

from apps.graph import in_process
from deployments.graph.routing import bucket, choose, pick
from tests.graph_callables import graph_args, node, py, sequence


def ab_graph(weights=(0.5, 0.5)) -> dict:
    nodes = {"a": py("echo", value="request.x"), "b": py("double", value="request.x")}
    split = {
        "kind": "split",
        "name": "ranker",
        "sticky_key": "request.user_id",
        "variants": [{"name": "champion", "weight": weights[0], "then": node("a")}, {"name": "challenger", "weight": weights[1], "then": node("b")}],
    }
    return graph_args(nodes, sequence(split), {"y": "ranker"})


def test_the_same_user_always_gets_the_same_variant():
    executor = in_process(ab_graph())

    async def go():
        return {user: {(await executor.run({"x": 1, "user_id": user})).routes["ranker"] for _ in range(5)} for user in range(50)}

    seen = asyncio.run(go())
    assert all(len(variants) == 1 for variants in seen.values())
    assert {v for variants in seen.values() for v in variants} == {"champion", "challenger"}


def test_the_answer_and_the_counts_name_the_variant():
    executor = in_process(ab_graph((0.0, 1.0)))
    answer = asyncio.run(executor.run({"x": 4, "user_id": 1}))
    assert (answer.output, answer.routes) == ({"y": 8}, {"ranker": "challenger"})
    assert executor.route_counts == {("ranker", "challenger"): 1}


def test_weights_are_honoured_over_many_users():
    picks = [choose([0.2, 0.8], "ranker", user) for user in range(20000)]
    assert abs(picks.count(0) / len(picks) - 0.2) < 0.015


def test_the_bucket_is_the_same_in_another_process():
    """Python's hash() is salted per process: the split must not use it."""
    code = "from deployments.graph.routing import bucket; print(repr([bucket('ranker', u) for u in (1, 7, 'u-42')]))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env={"PYTHONHASHSEED": "123"})
    assert other.stdout.strip() == repr([bucket("ranker", u) for u in (1, 7, "u-42")])


def test_moving_weight_moves_only_users_in_the_changed_range():
    before = [choose([0.5, 0.5], "s", u) for u in range(5000)]
    after = [choose([0.6, 0.4], "s", u) for u in range(5000)]
    moved = [(b, a) for b, a in zip(before, after) if b != a]
    assert moved and all(pair == (1, 0) for pair in moved)  # only challenger -> champion


def test_a_zero_weight_variant_is_never_picked():
    assert {pick([0.0, 1.0], p / 100) for p in range(100)} == {1}
    assert pick([1.0, 0.0], 0.999999999) == 0
