"""A node placed in its own deployment, seen from the graph's ingress
(deployments/graph/serving.py RemoteNode): its own errors cross the hop
unchanged, a failed hop is tried again (three calls in all), then it is a
503 naming the node.
The handle is a stand-in for a DeploymentHandle (no Ray cluster here); the
hop under Serve is tested in tests/integration/test_faults_under_load.py."""
import asyncio

import pytest
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayTaskError

from deployments.errors import BackendUnavailable, NotFound
from deployments.graph.serving import RemoteNode


class StandInHandle:
    """`handle.run.remote(inputs)` answering from a script of outcomes."""

    def __init__(self, *outcomes):
        self.outcomes, self.calls = list(outcomes), 0
        self.run = self

    def remote(self, inputs):
        self.calls += 1
        outcome = self.outcomes.pop(0)

        async def answer():
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome

        return answer()


def node(handle) -> RemoteNode:
    return RemoteNode("ranker", handle, {"fields": ["scores"], "join_keys": None, "records_scores": True})


def test_a_replica_that_died_mid_call_is_retried_elsewhere():
    handle = StandInHandle(ActorDiedError(), {"scores": [0.5]})
    assert asyncio.run(node(handle).run({})) == {"scores": [0.5]}
    assert handle.calls == 2


def test_both_old_replicas_gone_in_a_rolling_update_the_third_call_answers():
    handle = StandInHandle(ActorDiedError(), ActorUnavailableError("stopping", None), {"scores": [0.5]})
    assert asyncio.run(node(handle).run({})) == {"scores": [0.5]}
    assert handle.calls == 3


def test_three_failed_hops_are_a_503_naming_the_node():
    handle = StandInHandle(ActorDiedError(), ActorDiedError(), ActorDiedError(), {"scores": [0.5]})
    with pytest.raises(BackendUnavailable) as raised:
        asyncio.run(node(handle).run({}))
    assert raised.value.status == 503 and raised.value.headers["Retry-After"]
    assert raised.value.body()["error"]["backend"] == "node ranker"
    assert handle.calls == 3


def test_the_nodes_own_error_comes_back_as_raised_and_is_not_retried():
    missing = NotFound({"item_id": [70001]})
    wrapped = RayTaskError("run", "traceback", missing)
    handle = StandInHandle(wrapped)
    with pytest.raises(NotFound) as raised:
        asyncio.run(node(handle).run({}))
    assert raised.value.body() == missing.body() and handle.calls == 1
