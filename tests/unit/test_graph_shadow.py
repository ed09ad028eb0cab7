"""A shadow mirrors the request to a candidate after the primary has answered:
the answer is the primary's, never delayed or changed; the comparison is
recorded and a failing candidate is only counted."""
import asyncio

import pytest

from apps.graph import in_process
from tests.graph_callables import graph_args, node, py, sequence

REQUEST = {"x": {"type": "int"}, "delay": {"type": "float", "default": 0.0}}


def shadow_graph(candidate: dict) -> dict:
    nodes = {"primary": py("scores", n="request.x"), "candidate": candidate}
    shadow = {"kind": "shadow", "name": "ranked", "primary": node("primary"), "candidate": node("candidate")}
    return graph_args(nodes, sequence(shadow), {"y": "ranked"}, REQUEST)


def test_the_answer_is_the_primary_s_and_the_comparison_is_recorded():
    executor = in_process(shadow_graph(py("scores", n="request.x", params={"offset": 0.5})))

    async def go():
        answer = await executor.run({"x": 3})
        await executor.drain()
        return answer

    answer = asyncio.run(go())
    assert answer.output["y"]["model"]["name"] == "fake+0"
    counts = executor.shadows.counts["ranked"]
    assert (counts.mirrored, counts.compared, counts.failed) == (1, 1, 0)
    record = executor.shadows.records[-1]
    assert (record.equal, record.same_order, record.max_abs_diff) == (False, True, pytest.approx(0.5))


def test_a_slow_candidate_never_delays_the_primary():
    candidate_s = 2.0  # the candidate's sleep: waiting for it would take at least this
    slow = py("sleep_then", value="request.x", seconds="request.delay")
    executor = in_process(shadow_graph(slow))

    async def go():
        loop = asyncio.get_running_loop()
        started = loop.time()
        answer = await executor.run({"x": 2, "delay": candidate_s})
        answered_after = loop.time() - started
        in_flight = executor.shadows.counts["ranked"].compared
        await executor.drain()
        return answer, answered_after, in_flight

    answer, answered_after, in_flight = asyncio.run(go())
    # The primary answers in microseconds; any wait for the candidate would
    # take its whole sleep. No fixed "fast" bound a busy machine can miss.
    assert answered_after < candidate_s
    assert answer.output["y"]["scores"] == [0.0, 0.1]
    assert in_flight == 0  # the candidate was still running when the answer came back
    assert executor.shadows.counts["ranked"].compared == 1


def test_a_failing_candidate_is_counted_and_the_answer_is_unaffected():
    executor = in_process(shadow_graph(py("fail", value="request.x")))

    async def go():
        answers = [await executor.run({"x": 2}) for _ in range(3)]
        await executor.drain()
        return answers

    answers = asyncio.run(go())
    assert all(a.output["y"]["scores"] == [0.0, 0.1] and a.errors == {} for a in answers)
    counts = executor.shadows.counts["ranked"]
    assert (counts.mirrored, counts.compared, counts.failed) == (3, 0, 3)
    assert counts.last_error == "node candidate failed: RuntimeError"


def test_a_candidate_past_its_timeout_is_a_counted_failure():
    slow = {**py("sleep_then", value="request.x", seconds="request.delay"), "timeout_s": 0.05}
    executor = in_process(shadow_graph(slow))

    async def go():
        answer = await executor.run({"x": 2, "delay": 1.0})
        await executor.drain()
        return answer

    assert asyncio.run(go()).output["y"]["scores"] == [0.0, 0.1]
    assert executor.shadows.counts["ranked"].last_error == "candidate did not answer within 0.05 s"


def test_the_candidate_s_outputs_stay_out_of_the_answer():
    """It runs on a copy of the request's state: its slots and routes are its own."""
    nodes = {"primary": py("double", value="request.x"), "candidate": py("echo", value="request.x"), "after": py("echo", value="request.x")}
    shadow = {"kind": "shadow", "name": "ranked", "primary": node("primary"), "candidate": node("candidate")}
    executor = in_process(graph_args(nodes, sequence(shadow, "after"), {"y": "ranked", "after": "after"}, REQUEST))

    async def go():
        answer = await executor.run({"x": 3})
        await executor.drain()
        return answer

    answer = asyncio.run(go())
    assert answer.output == {"y": 6, "after": 3}
    assert set(answer.latency_ms) == {"primary", "after", "total"}
