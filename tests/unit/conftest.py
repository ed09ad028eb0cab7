"""Unit tests run with no servers, and leave the test process as they found
it: the integration tests that follow start the Ray cluster from it."""
import os
import sys

import pytest


@pytest.fixture(autouse=True)
def process_left_as_it_was():
    policy = os.sched_getscheduler(0)
    yield
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
        pytest.fail("this unit test started Ray (an implicit ray.init): unit tests run without a cluster")
    # A scheduling policy is inherited: every process started later (the
    # Ray cluster, its replicas) would run under what a test left here.
    assert os.sched_getscheduler(0) == policy, "this unit test changed the test process's scheduling policy"
