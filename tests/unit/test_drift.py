"""Drift detection (deployments/monitoring): Evidently's verdict on windows
of serving rows against a reference sample, the rows the ingress replicas
make of logged requests, and the settings refused at build time."""
from __future__ import annotations

import asyncio

import numpy as np
import pandas as pd
import pytest

from apps.graph import parse_args
from deployments.graph.validate import GraphSpecError
from deployments.monitoring.config import DriftConfig
from deployments.monitoring.drift import DriftDetector
from deployments.monitoring.feed import MAX_WAITING, DriftFeed, request_row
from deployments.nodes.feature_lookup import FeatureFrame
from tests.reference_registry import registry_with_reference

COLUMNS = [f"f{i}" for i in range(10)]


def sample(rows: int, seed: int, shift: dict[str, float] | None = None) -> pd.DataFrame:
    frame = pd.DataFrame(np.random.default_rng(seed).normal(size=(rows, len(COLUMNS))), columns=COLUMNS)
    for column, by in (shift or {}).items():
        frame[column] += by
    return frame


@pytest.fixture(scope="module")
def detector():
    return DriftDetector(sample(5000, seed=0), drift_share=0.3, method="ks")


def test_a_window_like_the_reference_does_not_drift(detector):
    verdict = detector.check(sample(300, seed=1).to_dict("records"))
    assert not verdict.drifted and verdict.share < 0.3 and verdict.rows == 300
    assert set(verdict.columns) == set(COLUMNS)
    assert all(c.method == "ks" and c.threshold == 0.05 and 0 <= c.score <= 1 for c in verdict.columns.values())


def test_a_window_whose_columns_moved_drifts_and_names_them(detector):
    moved = {"f0": 0.6, "f1": 0.6, "f2": -0.6, "f3": 0.6}
    verdict = detector.check(sample(300, seed=2, shift=moved).to_dict("records"))
    assert verdict.drifted and verdict.share >= 0.4
    assert {name for name, c in verdict.columns.items() if c.drifted} >= set(moved)
    assert all(verdict.columns[name].score < 0.05 for name in moved)  # K-S p-values


def test_rows_missing_a_column_are_read_as_missing_values_not_a_crash(detector):
    rows = sample(300, seed=3).to_dict("records")
    for row in rows[:10]:
        del row["f9"]
    assert detector.check(rows).rows == 300


def test_a_request_gives_one_row_an_item_s_features_and_its_score():
    frame = FeatureFrame({"u__age": [0.3, 0.3, 0.3], "i__price": [0.1, 0.2, 0.9]}, {}, {})
    row = request_row(frame, {"scores": [0.5, 0.6, 0.7], "model": {}}, draw=lambda n: 2)
    assert row == {"u__age": 0.3, "i__price": 0.9, "score": 0.7}
    assert request_row(None, {"scores": [0.5]}, draw=lambda n: 0) is None  # a request whose features failed
    assert request_row(frame, None, draw=lambda n: 0) is None


def test_the_feed_sends_rows_in_batches_and_counts_what_a_down_monitor_loses():
    config = DriftConfig(features_node="features", model_node="ranker", send_every_s=60)
    got, failing = [], [False]

    async def send(rows):
        if failing[0]:
            raise ConnectionError("monitor restarting")
        got.append(rows)

    frame = FeatureFrame({"u__age": [0.3]}, {}, {})
    state = {"features": frame, "ranker": {"scores": [0.5]}}

    counted = []

    class Counter:  # Ray's counter, recording
        def inc(self, value, tags):
            counted.append((tags["outcome"], value))

    async def scenario():
        feed = DriftFeed(config, send, graph="g")
        feed._metric = Counter()
        for _ in range(3):
            feed.observe(state)
        await feed.flush()
        failing[0] = True
        feed.observe(state)
        await feed.flush()
        feed.waiting = [{}] * MAX_WAITING
        feed.observe(state)  # full: dropped
        feed._count()
        feed._task.cancel()
        return feed

    feed = asyncio.run(scenario())
    assert got == [[{"u__age": 0.3, "score": 0.5}] * 3]
    assert (feed.sent, feed.dropped) == (3, 2)
    assert counted == [("sent", 3), ("dropped", 1), ("dropped", 1)], "increments per flush, never counted twice"


def graph_with(drift: dict, payload_nodes=("features", "ranker")) -> dict:
    nodes = {
        "features": {"kind": "feature_lookup", "config": {"repo_path": "x", "feature_service": "ranking"},
                     "inputs": {"user_id": "request.user_id"}},
        "ranker": {"kind": "triton_model", "config": {"url": "127.0.0.1:1", "model": "ranker"}, "inputs": {"features": "features"}},
        "ranking": {"kind": "aggregate", "config": {"op": "top_k"}, "inputs": {"items": "request.items", "scores": "ranker.scores", "k": "request.k"}},
    }
    args = {"graph": {"name": "g", "request": {"user_id": {"type": "int"}, "items": {"type": "list[int]"}, "k": {"type": "int"}},
                      "nodes": nodes, "flow": {"kind": "sequence", "steps": [{"kind": "node", "node": n} for n in nodes]},
                      "output": {"items": "ranking.items"}}}
    if payload_nodes is not None:
        args["payload_log"] = {"nodes": list(payload_nodes)}
    args["drift"] = drift
    return args


@pytest.mark.parametrize(
    "drift, payload_nodes, path, reason",
    [
        ({"features_node": "features", "model_node": "ranker"}, None, "drift", "needs payload_log"),
        ({"features_node": "ranker", "model_node": "ranker"}, ("features", "ranker"), "drift.features_node", "not a feature_lookup node"),
        ({"features_node": "features", "model_node": "ranking"}, ("features", "ranker"), "drift.model_node", "not a model node"),
        ({"features_node": "features", "model_node": "ranker"}, ("ranker",), "drift.features_node", "not in payload_log.nodes"),
        ({"features_node": "features", "model_node": "ranker", "window": 5}, ("features", "ranker"), "drift.window", "greater than or equal to 30"),
        ({"features_node": "features", "model_node": "ranker", "drift_share": 0}, ("features", "ranker"), "drift.drift_share", "greater than 0"),
    ],
)
def test_bad_drift_settings_are_refused_with_the_path_of_the_key(drift, payload_nodes, path, reason):
    with pytest.raises(GraphSpecError) as raised:
        parse_args(graph_with(drift, payload_nodes))
    found = {problem.path: problem.message for problem in raised.value.problems}
    assert path in found and reason in found[path], found


# -- the monitor deployment's class, outside Serve ----------------------------


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """`scorer` v1 (@champion) with a reference sample of COLUMNS, v2 (@bare) without (tests/reference_registry.py)."""
    return registry_with_reference(tmp_path_factory.mktemp("mlflow"), sample(2000, seed=0).assign(score=0.5), COLUMNS)


async def built_monitor(uri: str, alias: str, **settings):
    """The DriftMonitor class as Serve builds it (its __init__ is async)."""
    from deployments.monitoring.serving import DriftMonitor

    cls = DriftMonitor.func_or_class
    monitor = cls.__new__(cls)
    config = DriftConfig(features_node="features", model_node="ranker", window=30, check_every_s=3600, **settings)
    await monitor.__init__("g", config, uri, "scorer", alias)
    return monitor


def test_the_monitor_checks_a_full_window_against_the_alias_s_reference(registry):
    async def scenario():
        monitor = await built_monitor(registry, "champion", method="ks", drift_share=0.3)
        try:
            await monitor.add(sample(20, seed=4).assign(score=0.5).to_dict("records"))
            partial = await monitor.check_now()  # 20 of 30 rows: no verdict yet
            await monitor.add(sample(20, seed=5, shift={c: 2.0 for c in COLUMNS}).assign(score=0.5).to_dict("records"))
            return partial, await monitor.check_now()
        finally:
            monitor._loop_task.cancel()

    partial, full = asyncio.run(scenario())
    assert partial["verdict"] is None and partial["window"] == 20
    assert (full["version"], full["window"], full["received"], full["checks"]) == ("1", 30, 40, {"ok": 1})
    assert full["verdict"]["drifted"] is True and full["verdict"]["rows"] == 30


def test_a_detector_that_raises_is_counted_and_the_monitor_keeps_receiving(registry):
    async def scenario():
        monitor = await built_monitor(registry, "champion")
        try:
            def broken(rows):
                raise FloatingPointError("the detector broke")

            monitor.detector.check = broken
            await monitor.add(sample(30, seed=6).to_dict("records"))
            status = await monitor.check_now()
            return status, await monitor.add(sample(5, seed=7).to_dict("records"))
        finally:
            monitor._loop_task.cancel()

    status, window = asyncio.run(scenario())
    assert status["checks"] == {"failed": 1} and status["verdict"] is None
    assert status["last_error"] == "FloatingPointError: the detector broke"
    assert window == 30  # still taking rows (the latest 30)


def test_a_version_without_its_reference_sample_is_refused_with_the_path_of_the_key(registry):
    with pytest.raises(ValueError, match=r"^drift.reference_artifact: scorer version 2 has no artifact reference/features.parquet"):
        asyncio.run(built_monitor(registry, "bare"))


def test_the_build_refuses_reference_samples_the_alias_s_version_lacks_naming_each_key(registry):
    """Before any replica starts: the drift monitor's and an outlier node's reference, each by its key's path."""
    from apps.graph import build

    def args_on(alias: str) -> dict:
        args = graph_with({"features_node": "features", "model_node": "ranker"})
        args["graph"]["nodes"]["ranker"]["config"].update(model="scorer", alias=alias, registry_uri=registry)
        args["graph"]["nodes"]["odd"] = {"kind": "outlier", "config": {"model": "scorer", "alias": alias, "registry_uri": registry},
                                         "inputs": {"features": "features"}, "dependency": "soft"}
        args["graph"]["flow"]["steps"].append({"kind": "node", "node": "odd"})
        return args

    with pytest.raises(GraphSpecError) as raised:
        build(args_on("bare"))
    found = {problem.path: problem.message for problem in raised.value.problems}
    assert set(found) == {"drift.reference_artifact", "graph.nodes.odd.config.reference_artifact"}
    assert all(message.startswith("scorer version 2 has no artifact reference/features.parquet") for message in found.values())
    assert build(args_on("champion")) is not None


def test_a_slow_detector_is_given_up_counted_and_never_doubled_while_rows_still_arrive(registry):
    import threading

    release = threading.Event()

    async def scenario():
        monitor = await built_monitor(registry, "champion", check_timeout_s=0.2)
        try:
            monitor.detector.check = lambda rows: release.wait(60)  # a detector stuck past its bound
            await monitor.add(sample(30, seed=8).to_dict("records"))
            timed_out = await monitor.check_now()
            still_running = not monitor._running.done()
            skipped = await monitor.check_now()  # the stuck one still runs: no second beside it
            window = await monitor.add(sample(5, seed=9).to_dict("records"))
            release.set()
            await asyncio.wait_for(monitor._running, 30)
            return timed_out, still_running, skipped, window
        finally:
            release.set()
            monitor._loop_task.cancel()

    timed_out, still_running, skipped, window = asyncio.run(scenario())
    assert timed_out["checks"] == {"timeout": 1} and "check_timeout_s=0.2" in timed_out["last_error"]
    assert still_running, "the check was given up at its bound, not waited for"
    assert skipped["checks"] == {"timeout": 1, "skipped": 1} and timed_out["verdict"] is None
    assert window == 30
