"""Queue-depth autoscaling: a custom Ray Serve autoscaling policy.

Serve's default policy steers `ongoing / replicas` towards
`target_ongoing_requests`. For a node whose work is waiting on a backend
(the recommend graph's Triton call), what hurts users is the *backlog*:
requests that wait because every replica already runs `max_ongoing_requests`
(Serve's queued requests, at the handles and in the replicas' queues). This
policy sizes the deployment so that the backlog drains:

    desired = ceil((ongoing + queued) / per_replica)

where `per_replica` is the load one replica should carry (policy_kwargs,
default: the deployment's `target_ongoing_requests`); and it never scales
down while anything is queued. Serve applies min/max replicas, the
up/downscale delays and smoothing factors around it.

Use it from a Serve config:

    autoscaling_config:
      min_replicas: 1
      max_replicas: 4
      policy:
        policy_function: deployments.autoscaling:QueueDepthPolicy
        policy_kwargs: {per_replica: 8}

(In Kubernetes, Triton itself scales by its HorizontalPodAutoscaler on
Triton's own queue time, `nv_inference_queue_duration_us`: kuberay/.)
"""
from __future__ import annotations

import math
from typing import Any, Optional


class QueueDepthPolicy:
    def __init__(self, per_replica: Optional[float] = None):
        if per_replica is not None and per_replica <= 0:
            raise ValueError(f"per_replica must be > 0, got {per_replica}")
        self.per_replica = per_replica

    def __call__(self, ctx: Any) -> tuple[int, dict[str, Any]]:
        per_replica = self.per_replica or ctx.config.get_target_ongoing_requests()
        # total_num_requests counts the queued too, so queued <= total; Serve
        # aggregates the two over separate windows, and right after a start a
        # handle's stale queued sample showed with nothing in flight (the
        # policy then added a replica to an idle deployment).
        queued = min(ctx.total_queued_requests or 0.0, ctx.total_num_requests)
        running = ctx.total_num_requests - queued
        if queued > 0:
            desired = ctx.current_num_replicas + math.ceil(queued / per_replica)
        else:
            desired = math.ceil(running / per_replica)
        return desired, {"queued": queued, "running": running}
