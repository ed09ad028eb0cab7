"""Per-key rate limits: requests per second and a burst, per named API key,
per replica. A key over its rate gets 429 with Retry-After; other keys are
not affected.

The bucket is aiolimiter's leaky bucket (capacity `burst`, draining at
`requests_per_s`), checked without waiting: a request that finds no
capacity is refused at once rather than queued. Counting is per replica:
an app with N replicas lets a key through at up to N times its rate (the
proxy spreads its requests); a cluster-wide limit would need a shared store
(Redis) on every request's path.

Counts go to Ray's metrics as `ray_api_key_requests_total{app, key,
outcome}` (outcome `accepted` or `rate_limited`): the key's name, never the
key.
"""
from __future__ import annotations

import math
from typing import Optional

from aiolimiter import AsyncLimiter
from pydantic import BaseModel, ConfigDict, Field, model_validator


class RateLimit(BaseModel):
    """The rate of one key, per replica."""

    model_config = ConfigDict(extra="forbid")

    requests_per_s: float = Field(gt=0, description="Sustained requests per second, per replica.")
    burst: Optional[int] = Field(None, ge=1, description="Requests allowed at once above the rate; default: one second's worth.")

    @model_validator(mode="after")
    def _default_burst(self):
        if self.burst is None:
            self.burst = max(1, math.ceil(self.requests_per_s))
        return self

    @property
    def retry_after_s(self) -> int:
        """When a full bucket has room again, at the latest: one request drains in 1/rate."""
        return max(1, math.ceil(1 / self.requests_per_s))


class KeyRateLimits:
    """One bucket per limited key name, in the replica's event loop: between
    the check and the take nothing else runs, so two requests cannot both
    take the last place."""

    def __init__(self, limits: dict[str, RateLimit]):
        self.limits = limits
        self._buckets = {name: AsyncLimiter(limit.burst, limit.burst / limit.requests_per_s) for name, limit in limits.items()}
        self._counter, self.app = _counter()

    def __bool__(self) -> bool:
        return bool(self._buckets)

    async def admit(self, name: str) -> Optional[int]:
        """None when the request may go on; else the seconds to send in
        Retry-After. Every key's requests are counted, limited or not."""
        bucket = self._buckets.get(name)
        if bucket is None:
            self._count(name, "accepted")
            return None
        if not bucket.has_capacity():
            self._count(name, "rate_limited")
            return self.limits[name].retry_after_s
        await bucket.acquire()  # returns at once: there is capacity, and nothing ran since the check
        self._count(name, "accepted")
        return None

    def _count(self, name: str, outcome: str) -> None:
        if self._counter is not None:
            self._counter.inc(tags={"app": self.app, "key": name, "outcome": outcome})


def _counter():
    """(Ray's counter, the Serve application's name) in a replica; (None, "") elsewhere."""
    try:
        import ray

        if not ray.is_initialized():
            return None, ""
        from ray import serve
        from ray.util.metrics import Counter

        counter = Counter(
            "api_key_requests_total",
            description="Requests per API key name and outcome (accepted, or rate_limited: over the key's rate).",
            tag_keys=("app", "key", "outcome"),
        )
        try:
            app = serve.get_replica_context().app_name
        except Exception:  # noqa: BLE001 - a Ray worker that is no replica
            app = ""
        return counter, app
    except ImportError:  # pragma: no cover - Ray is a dependency
        return None, ""
