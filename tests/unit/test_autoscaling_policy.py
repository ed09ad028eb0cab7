"""The queue-depth policy's decisions (Serve applies bounds and delays around them)."""
from types import SimpleNamespace

import pytest

from deployments.autoscaling import QueueDepthPolicy


def context(replicas: int, total: float, queued: float, target: float = 4) -> SimpleNamespace:
    """The fields of Serve's AutoscalingContext the policy reads."""
    config = SimpleNamespace(get_target_ongoing_requests=lambda: target)
    return SimpleNamespace(current_num_replicas=replicas, total_num_requests=total, total_queued_requests=queued, config=config)


def test_a_backlog_adds_replicas_for_the_waiting_requests():
    assert QueueDepthPolicy(per_replica=8)(context(replicas=2, total=16 + 20, queued=20))[0] == 2 + 3


def test_without_a_backlog_replicas_follow_the_running_load():
    assert QueueDepthPolicy(per_replica=8)(context(replicas=4, total=12, queued=0))[0] == 2
    assert QueueDepthPolicy(per_replica=8)(context(replicas=4, total=0, queued=0))[0] == 0  # Serve floors it at min_replicas


def test_never_scales_down_while_requests_wait():
    assert QueueDepthPolicy(per_replica=8)(context(replicas=5, total=1, queued=1))[0] >= 5


def test_a_queued_count_above_everything_in_flight_is_a_stale_window_not_a_backlog():
    """Serve aggregates queued and total requests over separate windows: right
    after a start the queued one showed 2 with nothing in flight, and an idle
    deployment got a second replica."""
    assert QueueDepthPolicy(per_replica=4)(context(replicas=1, total=0, queued=2))[0] == 0
    assert QueueDepthPolicy(per_replica=4)(context(replicas=1, total=3, queued=5))[0] == 1 + 1  # 3 queued at most


def test_per_replica_defaults_to_the_deployments_target():
    assert QueueDepthPolicy()(context(replicas=1, total=8, queued=0, target=2))[0] == 4


def test_per_replica_must_be_positive():
    with pytest.raises(ValueError, match="per_replica"):
        QueueDepthPolicy(per_replica=0)
