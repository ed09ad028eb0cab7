"""Batching across requests (deployments/nodes/batching.py): what a node
kind's batch call sees, and what each request gets back."""
from __future__ import annotations

import asyncio

import pytest

from apps.graph import parse_args
from deployments.graph.validate import GraphSpecError
from deployments.nodes.batching import BatchConfig, Batcher, Failed
from tests.graph_callables import graph_args, py, sequence


class Backend:
    """A batch call that records each call's items and holds it until released."""

    def __init__(self):
        self.calls: list[list[int]] = []
        self.release = asyncio.Event()

    async def __call__(self, items: list[int]) -> list:
        self.calls.append(list(items))
        await self.release.wait()
        return [Failed(ValueError(f"item {item} refused")) if item < 0 else item * 10 for item in items]


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 30))


async def busy(max_wait_ms: float = 1000) -> tuple[Backend, Batcher, asyncio.Future]:
    """A batcher whose node is busy: its first request (1) is in flight, held by the backend."""
    backend = Backend()
    batcher = Batcher("n", BatchConfig(max_batch_size=8, max_wait_ms=max_wait_ms), backend)
    first = asyncio.ensure_future(batcher(1))
    await asyncio.sleep(0)
    return backend, batcher, first


def test_a_request_that_finds_the_node_idle_is_sent_at_once():
    async def scenario():
        backend = Backend()
        batcher = Batcher("n", BatchConfig(max_batch_size=8, max_wait_ms=1000), backend)
        task = asyncio.ensure_future(batcher(1))
        await asyncio.sleep(0)  # one turn of the loop: no timer could have fired
        assert backend.calls == [[1]]
        backend.release.set()
        return await task

    assert run(scenario()) == 10


def test_requests_that_arrive_while_a_call_is_in_flight_go_as_one_call_in_order():
    async def scenario():
        backend, batcher, first = await busy()
        rest = [asyncio.ensure_future(batcher(item)) for item in (2, 3, 4)]
        await asyncio.sleep(0)
        assert backend.calls == [[1]]  # the others wait: the node is busy
        backend.release.set()  # the first call ends: the node is idle, what waits goes now (not after 1 s)
        results = await asyncio.gather(first, *rest)
        return backend.calls, results

    calls, results = run(scenario())
    assert calls == [[1], [2, 3, 4]]
    assert results == [10, 20, 30, 40]


def test_a_batch_never_exceeds_max_batch_size_rows_and_a_larger_request_goes_alone():
    async def scenario():
        backend = Backend()
        backend.release.set()
        sizes = {1: 1, 2: 3, 3: 3, 4: 2, 5: 9}
        batcher = Batcher("n", BatchConfig(max_batch_size=4, max_wait_ms=1000), backend, rows=sizes.get)
        busy = asyncio.ensure_future(batcher(1))
        others = [asyncio.ensure_future(batcher(item)) for item in (2, 3, 4, 5)]
        await asyncio.gather(busy, *others)
        return backend.calls, sizes

    calls, sizes = run(scenario())
    assert [5] in calls  # 9 rows, more than a batch holds: alone
    assert all(sum(sizes[i] for i in call) <= 4 for call in calls if call != [5])
    assert sorted(i for call in calls for i in call) == [1, 2, 3, 4, 5]


def test_a_request_that_fails_on_its_own_fails_alone():
    async def scenario():
        backend, batcher, first = await busy()
        rest = [asyncio.ensure_future(batcher(item)) for item in (2, -3, 4)]
        await asyncio.sleep(0)
        backend.release.set()
        return backend.calls, await asyncio.gather(first, *rest, return_exceptions=True)

    calls, results = run(scenario())
    assert calls == [[1], [2, -3, 4]]
    assert results[:2] == [10, 20] and results[3] == 40
    assert isinstance(results[2], ValueError) and str(results[2]) == "item -3 refused"


def test_a_failed_call_fails_every_request_in_it_with_its_error():
    async def broken(items):
        await asyncio.sleep(0.01)
        raise ConnectionError("backend gone")

    async def scenario():
        batcher = Batcher("n", BatchConfig(max_batch_size=8, max_wait_ms=1000), broken)
        return await asyncio.gather(*[batcher(item) for item in (1, 2, 3)], return_exceptions=True)

    results = run(scenario())
    assert [type(r) for r in results] == [ConnectionError] * 3
    assert all(str(r) == "backend gone" for r in results)


def test_a_request_that_gives_up_while_waiting_does_not_break_the_batch():
    async def scenario():
        backend, batcher, first = await busy()
        leaving = asyncio.ensure_future(batcher(2))
        staying = asyncio.ensure_future(batcher(3))
        await asyncio.sleep(0)
        leaving.cancel()  # its own timeout, or its client gone
        backend.release.set()
        return backend.calls, await first, await staying, leaving.cancelled()

    calls, first, staying, cancelled = run(scenario())
    assert (first, staying, cancelled) == (10, 30, True)
    assert calls == [[1], [2, 3]]


def test_a_request_waiting_behind_a_stalled_call_fails_within_its_own_timeout():
    """The call in flight stalls (a frozen backend, bounded by its own timeout
    of 0.4 s); requests that arrive meanwhile fail with the node's timeout
    error 0.4 s after they arrived, not after the stalled call's timeout and
    then their own batch's."""
    timeout_s = 0.4

    async def stalled(items):
        await asyncio.sleep(timeout_s)  # the first call's own bound
        raise TimeoutError("first call timed out")

    async def scenario():
        batcher = Batcher("n", BatchConfig(max_batch_size=8, max_wait_ms=1), stalled,
                          timeout_s=timeout_s, on_timeout=lambda: LookupError("n did not answer"))
        first = asyncio.ensure_future(batcher(1))
        await asyncio.sleep(0.1)  # arrive while the first call stalls

        async def timed(item):
            started = asyncio.get_running_loop().time()
            try:
                await batcher(item)
            except LookupError as error:
                return str(error), asyncio.get_running_loop().time() - started
        waited = await asyncio.gather(timed(2), timed(3))
        return await asyncio.gather(first, return_exceptions=True), waited

    (first,), waited = run(scenario())
    assert isinstance(first, TimeoutError)
    for message, elapsed_s in waited:
        assert message == "n did not answer"
        # 0.4 s, not 0.3 + 0.4 (the rest of the stalled call, then its own batch's call)
        assert timeout_s <= elapsed_s < timeout_s + 0.25, elapsed_s


def test_requests_that_gather_while_the_node_stays_busy_go_after_max_wait_ms():
    async def scenario():
        backend, batcher, first = await busy(max_wait_ms=1)
        second = asyncio.ensure_future(batcher(2))
        while len(backend.calls) < 2:  # the first call still holds: the wait ran out
            await asyncio.sleep(0.001)
        backend.release.set()
        return backend.calls, await first, await second

    assert run(scenario()) == ([[1], [2]], 10, 20)


@pytest.mark.parametrize(
    "batch, path, reason",
    [
        ({"max_batch_size": 0}, "graph.nodes.d.python.batch.max_batch_size", "greater than or equal to 1"),
        ({"max_batch_size": 8, "max_wait_ms": -1}, "graph.nodes.d.python.batch.max_wait_ms", "greater than or equal to 0"),
        ({"max_batch_size": 8, "wait": 1}, "graph.nodes.d.python.batch.wait", "Extra inputs are not permitted"),
    ],
)
def test_bad_batch_settings_are_refused_with_the_path_of_the_key(batch, path, reason):
    nodes = {"d": {**py("double", value="request.x"), "batch": batch}}
    with pytest.raises(GraphSpecError) as raised:
        parse_args(graph_args(nodes, sequence("d"), {"y": "d"}))
    found = {problem.path: problem.message for problem in raised.value.problems}
    assert path in found and reason in found[path], found


def test_batch_on_a_kind_that_cannot_batch_is_refused():
    nodes = {"d": py("scores", n="request.x"),
             "m": {"kind": "aggregate", "config": {"op": "mean_scores"}, "inputs": {"outputs": ["d"]}, "batch": {"max_batch_size": 8}}}
    with pytest.raises(GraphSpecError) as raised:
        parse_args(graph_args(nodes, sequence("d", "m"), {"y": "m"}))
    assert [(p.path, p.message) for p in raised.value.problems] == [
        ("graph.nodes.m.batch", "aggregate nodes do not batch (feature_lookup, triton_model, v2_model, torch_model and python do)")]


def test_a_batched_python_node_gets_lists_in_process_and_each_request_its_own_answer():
    from apps.graph import in_process
    from deployments.graph.errors import NodeFailed
    from tests import graph_callables

    graph_callables.BATCHES.clear()
    nodes = {"d": {**py("batched_double", value="request.x"), "batch": {"max_batch_size": 8, "max_wait_ms": 1000}}}
    executor = in_process(graph_args(nodes, sequence("d"), {"y": "d"}))

    async def scenario():
        first = asyncio.ensure_future(executor.run({"x": 1}))
        await asyncio.sleep(0)
        others = [executor.run({"x": x}) for x in (2, -3, 4)]
        return await asyncio.gather(first, *others, return_exceptions=True)

    answers = run(scenario())
    assert graph_callables.BATCHES == [[1], [2, -3, 4]]
    assert [a.output["y"] for a in answers if not isinstance(a, Exception)] == [2, 4, 8]
    assert isinstance(answers[2], NodeFailed) and answers[2].message == "node d failed: ValueError"
