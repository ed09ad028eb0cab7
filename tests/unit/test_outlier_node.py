"""The outlier node scores each request's feature rows against the training
sample stored with a model version (scikit-learn's Isolation Forest, fitted
when the node is built); as a soft node, a slow detector never fails the
request. The registry here is a private SQLite one."""
from __future__ import annotations

import asyncio
import numpy as np
import pandas as pd
import pytest

from apps.graph import in_process
from deployments.nodes.feature_lookup import FeatureFrame
from deployments.nodes.outlier import OutlierConfig, OutlierDetector
from tests.graph_callables import graph_args, py, sequence
from tests.reference_registry import registry_with_reference

COLUMNS = ["u__age", "i__price", "i__popularity"]


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """`scorer` v1 (@champion) with a uniform reference sample, v2 (@bare) without (tests/reference_registry.py)."""
    reference = pd.DataFrame(np.random.default_rng(0).uniform(0, 1, size=(2000, 3)), columns=COLUMNS).assign(score=0.5)
    return registry_with_reference(tmp_path_factory.mktemp("mlflow"), reference, COLUMNS)


def frame(rows: np.ndarray) -> FeatureFrame:
    return FeatureFrame({name: rows[:, i].tolist() for i, name in enumerate(COLUMNS)}, {}, {})


def test_rows_like_the_training_data_are_not_outliers_and_far_ones_are(registry):
    detector = OutlierDetector(OutlierConfig(model="scorer", registry_uri=registry))
    usual = asyncio.run(detector.run({"features": frame(np.full((20, 3), 0.5))}))
    unusual = asyncio.run(detector.run({"features": frame(np.vstack([np.full((19, 3), 0.5), [[5.0, -3.0, 9.0]]]))}))
    assert (usual["outlier"], usual["rows"]) == (False, 20) and usual["score"] < 0
    assert unusual["outlier"] is True and unusual["score"] > 0  # one row far from everything it was trained on
    assert unusual["model"] == {"name": "scorer", "version": "1", "alias": "champion"}


def test_features_the_version_was_trained_on_must_be_there(registry):
    detector = OutlierDetector(OutlierConfig(model="scorer", registry_uri=registry))
    partial = FeatureFrame({"u__age": [0.5]}, {}, {})
    with pytest.raises(ValueError, match=r"the features lack \['i__popularity', 'i__price'\]"):
        asyncio.run(detector.run({"features": partial}))


def test_a_version_without_its_reference_sample_is_refused_when_the_node_is_built(registry):
    with pytest.raises(ValueError, match=r"^config.reference_artifact: scorer version 2 has no artifact reference/features.parquet"):
        OutlierDetector(OutlierConfig(model="scorer", alias="bare", registry_uri=registry))


def test_as_a_soft_node_a_slow_detector_never_fails_the_request(registry):
    nodes = {
        "rows": py("rows_of_three", values="request.values"),
        "outlier": {"kind": "outlier", "config": {"model": "scorer", "registry_uri": registry}, "inputs": {"features": "rows"},
                    "dependency": "soft", "timeout_s": 0.05},
    }
    args = graph_args(nodes, sequence("rows", "outlier"), {"outlier": "outlier"}, {"values": {"type": "list[float]"}})
    executor = in_process(args)
    detector = executor.nodes["outlier"]
    slow = detector.score
    detector.score = lambda rows: (__import__("time").sleep(0.5), slow(rows))[1]  # a detector stuck for 0.5 s
    answer = asyncio.run(executor.run({"values": [0.5, 0.5, 0.5]}))
    assert answer.output == {"outlier": None}
    assert answer.errors["outlier"].startswith("outlier did not answer within 0.05 s")
