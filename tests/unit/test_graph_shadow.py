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


def shadow_with(candidate: dict, **settings) -> dict:
    args = shadow_graph(candidate)
    args["graph"]["flow"]["steps"][0].update(settings)
    return args


def test_a_comparison_holds_the_top_k_agreement_score_differences_and_rank_correlation():
    from deployments.graph.shadow import compare

    primary = {"scores": [0.9, 0.8, 0.7, 0.6, 0.5, 0.1]}
    candidate = {"scores": [0.8, 0.9, 0.7, 0.1, 0.5, 0.6]}  # items 0 and 1 swapped, 3 and 5 swapped
    record = compare("ranked", primary, candidate, 1.0, 2.0, top_k=3)
    assert record.topk_agreement == 1.0  # {0, 1, 2} in both top 3
    assert compare("ranked", primary, candidate, 1.0, 2.0, top_k=4).topk_agreement == 0.75  # item 3 left the top 4
    assert record.max_abs_diff == pytest.approx(0.5) and record.mean_abs_diff == pytest.approx(1.2 / 6)
    assert record.rank_correlation == pytest.approx(1 - 6 * (1 + 1 + 0 + 4 + 0 + 4) / (6 * 35))  # Spearman's rho
    assert (record.same_order, record.equal) == (False, False)
    assert compare("ranked", {"scores": [1.0]}, {"scores": [0.5]}, 1, 1).rank_correlation is None  # undefined for one item


def test_only_a_sampled_share_of_requests_is_mirrored():
    executor = in_process(shadow_with(py("scores", n="request.x"), sample_ratio=0.5))
    draws = iter([0.1, 0.9, 0.4, 0.6])
    executor._draw = lambda: next(draws)

    async def go():
        for _ in range(4):
            await executor.run({"x": 2})
        await executor.drain()

    asyncio.run(go())
    counts = executor.shadows.counts["ranked"]
    assert (counts.mirrored, counts.compared, counts.dropped) == (2, 2, 0)


def test_a_stalled_candidate_cannot_pile_up_mirrored_calls():
    stalled = py("sleep_then", value="request.x", seconds="request.delay")
    executor = in_process(shadow_with(stalled, max_in_flight=3, timeout_s=0.5))

    async def go():
        answers = [await executor.run({"x": 2, "delay": 60.0}) for _ in range(10)]
        in_flight = len(executor._background)
        await executor.drain()  # the stalled calls end at their timeout, not after 60 s
        return answers, in_flight

    answers, in_flight = asyncio.run(go())
    assert all(a.output["y"]["scores"] == [0.0, 0.1] for a in answers)
    counts = executor.shadows.counts["ranked"]
    assert in_flight == 3 and (counts.mirrored, counts.dropped) == (3, 7)
    assert counts.failed == 3 and counts.last_error == "shadow ranked did not answer within 0.5 s"
    assert executor.shadows.in_flight["ranked"] == 0  # freed: mirroring goes on after a stall


def test_comparisons_of_logged_requests_go_to_the_payload_log(tmp_path):
    import json

    args = shadow_graph(py("scores", n="request.x", params={"offset": 0.5}))
    args["payload_log"] = {"sink": {"kind": "file", "directory": str(tmp_path)}}
    executor = in_process(args)
    executor.payloads.request_id = lambda: "req-1"

    async def go():
        await executor.run({"x": 3})
        await executor.drain()

    asyncio.run(go())
    assert executor.payloads.flush(5)
    lines = [json.loads(line) for path in (tmp_path / "test").iterdir() for line in path.read_text().splitlines()]
    by_type = {record["type"]: record for record in lines}
    shadow = by_type["io.serve-graphs.shadow"]
    assert (shadow["id"], shadow["source"]) == ("req-1", "graph/test/ranked")
    assert shadow["data"]["topk_agreement"] == 1.0 and shadow["data"]["mean_abs_diff"] == pytest.approx(0.5)
    assert shadow["data"]["candidate"]["model"]["name"] == "fake+0.5"
    assert by_type["io.serve-graphs.inference"]["id"] == "req-1"
