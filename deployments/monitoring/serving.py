"""The drift monitor of a graph app: one Serve deployment (one replica, no
CPU reserved) that the ingress replicas send their rows to
(deployments/monitoring/feed.py). Every `check_every_s` it compares the
latest `window` rows with the reference sample of the model version its
alias names now (re-read each time: a moved alias brings its own
reference), in a worker thread, and exports the verdict:

    ray_graph_drift_detected{graph, model, version}      1 while the window drifts
    ray_graph_drift_share{graph}                         share of drifted columns
    ray_graph_feature_drift_score{graph, feature, method}  each column's statistic
    ray_graph_feature_drifted{graph, feature}            1 while that column drifts
    ray_graph_drift_checks_total{graph, outcome}         ok / failed (a detector that raised) /
                                                         timeout (slower than check_timeout_s) /
                                                         skipped (the timed-out one still runs)

The gauges are set again every few seconds between checks (Ray drops a
gauge's series ~20 s after its last set). A detector that raises or is slow
affects no request: the ingress only sends rows, and a failed or slow check
is counted and logged; a slow one's thread is left to finish, and no other
check starts beside it.
"""
from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any, Optional

import pandas as pd
from ray import serve

from deployments.monitoring.config import DriftConfig
from deployments.monitoring.drift import DriftDetector, DriftVerdict
from deployments.metrics import GAUGE_REFRESH_S
from deployments.monitoring.feed import SCORE

logger = logging.getLogger("ray.serve.serve_graphs.monitoring")


def load_reference(registry_uri: str, model: str, version: str, artifact: str, columns: list[str]) -> pd.DataFrame:
    """The version's reference sample: its input features and, when recorded, its scores."""
    from deployments.registry import download_run_artifact

    frame = pd.read_parquet(download_run_artifact(registry_uri, model, version, artifact))
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"drift.reference_artifact: {model} version {version}'s {artifact} lacks columns {missing}")
    return frame[columns + ([SCORE] if SCORE in frame.columns else [])]


@serve.deployment(num_replicas=1, max_ongoing_requests=100, ray_actor_options={"num_cpus": 0},
                  health_check_period_s=10, health_check_timeout_s=30)
class DriftMonitor:
    async def __init__(self, graph: str, config: DriftConfig, registry_uri: str, model: str, alias: str):
        from deployments.registry import MissingArtifact, resolve_alias

        self.graph, self.config = graph, config
        self.registry_uri, self.model, self.alias = registry_uri, model, alias
        self.window: collections.deque = collections.deque(maxlen=config.window)
        self.received = 0
        self.last: Optional[DriftVerdict] = None
        self.last_error = ""
        self.checks = collections.Counter()
        self._running: Optional[asyncio.Future] = None  # the check under way
        ref = resolve_alias(registry_uri, model, alias)
        try:
            self._use(ref.version, ref.input_features)
        except MissingArtifact as error:
            raise ValueError(f"drift.reference_artifact: {error}") from None
        self._metrics = _Metrics()
        self._loop_task = asyncio.get_running_loop().create_task(self._check_forever())
        self._refresh_task = asyncio.get_running_loop().create_task(self._refresh_forever())

    def _use(self, version: str, columns: list[str]) -> None:
        self.version = version
        reference = load_reference(self.registry_uri, self.model, version, self.config.reference_artifact, columns)
        self.detector = DriftDetector(reference, self.config.drift_share, self.config.method)

    async def add(self, rows: list[dict[str, float]]) -> int:
        """Rows from an ingress replica; the window keeps the latest `window`."""
        self.window.extend(rows)
        self.received += len(rows)
        return len(self.window)

    async def status(self) -> dict[str, Any]:
        """The last verdict, the window and the check counts (tests, the CLI)."""
        return {"graph": self.graph, "model": self.model, "version": self.version, "window": len(self.window),
                "received": self.received, "checks": dict(self.checks), "last_error": self.last_error,
                "verdict": self.last.as_dict() if self.last is not None else None}

    async def check_now(self) -> dict[str, Any]:
        await self._check()
        return await self.status()

    async def _check_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.check_every_s)
            await self._check()

    async def _refresh_forever(self) -> None:
        """The last verdict's gauges, set again between checks (GAUGE_REFRESH_S)."""
        while True:
            await asyncio.sleep(GAUGE_REFRESH_S)
            if self.last is not None:
                self._metrics.verdict(self.graph, self.model, self.version, self.last)

    async def _check(self) -> None:
        if len(self.window) < self.config.window:
            return  # no verdict on a partial window: too few rows to say either way
        if self._running is not None and not self._running.done():
            self._not_checked("skipped", "the previous check, past its check_timeout_s, still runs")
            return
        self._running = asyncio.ensure_future(self._verdict(list(self.window)))
        self._running.add_done_callback(lambda done: done.cancelled() or done.exception())  # a late failure: no warning
        try:
            verdict = await asyncio.wait_for(asyncio.shield(self._running), self.config.check_timeout_s)
        except asyncio.TimeoutError:
            self._not_checked("timeout", f"the check took over check_timeout_s={self.config.check_timeout_s:g} s")
            return
        except Exception as error:  # a failing detector is counted, never a request's failure
            self._not_checked("failed", f"{type(error).__name__}: {error}")
            return
        self.checks["ok"] += 1
        self.last = verdict
        self._metrics.checked(self.graph, "ok")
        self._metrics.verdict(self.graph, self.model, self.version, verdict)

    async def _verdict(self, rows: list[dict[str, float]]) -> DriftVerdict:
        ref = await asyncio.to_thread(self._current_alias)
        if ref is not None:
            await asyncio.to_thread(self._use, *ref)
        return await asyncio.to_thread(self.detector.check, rows)

    def _not_checked(self, outcome: str, reason: str) -> None:
        self.checks[outcome] += 1
        self.last_error = reason[:500]
        self._metrics.checked(self.graph, outcome)
        logger.warning("drift check of graph %s: %s: %s", self.graph, outcome, self.last_error)

    def _current_alias(self) -> Optional[tuple[str, list[str]]]:
        """(version, its input features) when the alias moved since the last check."""
        from deployments.registry import resolve_alias

        ref = resolve_alias(self.registry_uri, self.model, self.alias)
        return None if ref.version == self.version else (ref.version, ref.input_features)

    def check_health(self) -> None:
        for task in (self._loop_task, self._refresh_task):
            if task.done():
                raise RuntimeError(f"a drift monitor loop stopped: {task.exception()!r}")


class _Metrics:
    """The verdict on Ray's Prometheus endpoint (no-ops outside Ray)."""

    def __init__(self):
        import ray

        self._version: Optional[tuple[str, str]] = None
        self.enabled = ray.is_initialized()
        if not self.enabled:
            return
        from ray.serve import metrics

        self.detected = metrics.Gauge("graph_drift_detected", tag_keys=("graph", "model", "version"),
                                      description="1 while the latest window of a graph's traffic drifts from the "
                                      "model version's training sample (share of drifted columns >= drift_share).")
        self.share = metrics.Gauge("graph_drift_share", tag_keys=("graph",),
                                   description="Share of the watched columns whose distribution drifted, latest window.")
        self.score = metrics.Gauge("graph_feature_drift_score", tag_keys=("graph", "feature", "method"),
                                   description="Each column's drift statistic in the latest window (a p-value or a "
                                   "distance: the method label says which).")
        self.drifted = metrics.Gauge("graph_feature_drifted", tag_keys=("graph", "feature"),
                                     description="1 while a column's distribution drifts, latest window.")
        self.checks = metrics.Counter("graph_drift_checks_total", tag_keys=("graph", "outcome"),
                                      description="Drift checks of a graph's traffic: ok, failed (the detector raised), timeout "
                                      "(slower than check_timeout_s) or skipped (a timed-out check still ran).")

    def checked(self, graph: str, outcome: str) -> None:
        if self.enabled:
            self.checks.inc(tags={"graph": graph, "outcome": outcome})

    def verdict(self, graph: str, model: str, version: str, verdict: DriftVerdict) -> None:
        if not self.enabled:
            return
        if self._version is not None and self._version != (model, version):  # a moved alias: the old series reads 0
            self.detected.set(0, tags={"graph": graph, "model": self._version[0], "version": self._version[1]})
        self._version = (model, version)
        self.detected.set(1 if verdict.drifted else 0, tags={"graph": graph, "model": model, "version": version})
        self.share.set(verdict.share, tags={"graph": graph})
        for name, column in verdict.columns.items():
            self.score.set(column.score, tags={"graph": graph, "feature": name, "method": column.method})
            self.drifted.set(1 if column.drifted else 0, tags={"graph": graph, "feature": name})
