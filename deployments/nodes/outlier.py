"""The `outlier` node kind: how unusual a request's features are, against
the training sample of a model version.

    outlier:
      kind: outlier
      dependency: soft          # a slow or failing detector never fails the request
      timeout_s: 0.2
      config: {model: ranker, alias: champion, registry_uri: sqlite:///.local/mlflow/mlflow.db}
      inputs: {features: features}

The detector is scikit-learn's Isolation Forest, fitted once when the node
is built on the reference sample the training step stored with the version
(`reference/features.parquet` in its MLflow run, the same one drift
detection reads), on the version's input features. Each request's rows are
scored in a worker thread:

    {"score": the largest of its rows' anomaly scores (positive: beyond the
              forest's threshold, sklearn's `-decision_function`),
     "outlier": whether any row is beyond it, "rows": how many were scored,
     "model": the version whose training data is the reference}

Drift (deployments/monitoring) asks whether the traffic as a whole moved;
this asks it of one request, while it is served.
"""
from __future__ import annotations

import asyncio
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from deployments.nodes.base import Node, NodeSpec, Strict
from deployments.nodes.feature_lookup import FeatureFrame
from deployments.registry import MissingArtifact, download_run_artifact, missing_run_artifact, resolve_alias, served


class OutlierConfig(Strict):
    model: str = Field(min_length=1, description="Registered model whose version's training sample is the reference.")
    alias: str = Field("champion", min_length=1, description="MLflow alias that selects the version.")
    registry_uri: str = Field("sqlite:///.local/mlflow/mlflow.db", description="MLflow registry URI.")
    reference_artifact: str = Field("reference/features.parquet", min_length=1,
                                    description="The artifact, in the run of the version, with the training features.")
    n_estimators: int = Field(100, ge=10, le=1000, description="Trees of the Isolation Forest.")
    seed: int = Field(0, description="The forest's random state: the same reference gives the same scores.")


class OutlierNode(NodeSpec):
    """A per-request outlier score against a model version's training data (module docstring)."""

    kind: Literal["outlier"]
    config: OutlierConfig
    required_inputs: ClassVar[frozenset[str]] = frozenset({"features"})

    def build(self, name: str, companion: Any = None) -> Node:
        return OutlierDetector(self.config)

    def registry_problems(self) -> list[tuple[str, str]]:
        config = self.config
        missing = missing_run_artifact(config.registry_uri, config.model, config.alias, config.reference_artifact)
        return [] if missing is None else [("config.reference_artifact", missing)]


class OutlierDetector(Node):
    backend = "outlier"

    def __init__(self, config: OutlierConfig):
        import pandas as pd
        from sklearn.ensemble import IsolationForest

        self.config = config
        self.ref = resolve_alias(config.registry_uri, config.model, config.alias)
        try:
            path = download_run_artifact(config.registry_uri, config.model, self.ref.version, config.reference_artifact)
        except MissingArtifact as error:
            raise ValueError(f"config.reference_artifact: {error}") from None
        reference = pd.read_parquet(path)
        self.columns = [c for c in self.ref.input_features if c in reference.columns] or \
            [c for c in reference.columns if c != "score"]
        self.forest = IsolationForest(n_estimators=config.n_estimators, random_state=config.seed)
        self.forest.fit(reference[self.columns].to_numpy(np.float32))

    def fields(self) -> set[str]:
        return {"score", "outlier", "rows", "model"}

    def score(self, rows: np.ndarray) -> dict[str, Any]:
        anomaly = -self.forest.decision_function(rows)
        return {"score": float(anomaly.max()), "outlier": bool((anomaly > 0).any()), "rows": int(len(rows))}

    async def run(self, inputs: dict[str, Any]) -> dict[str, Any]:
        features = inputs["features"]
        if isinstance(features, FeatureFrame):
            missing = sorted(set(self.columns) - set(features.values))
            if missing:
                raise ValueError(f"the features lack {missing}, which {self.config.model} v{self.ref.version} was trained on")
            rows = features.matrix(self.columns)
        else:
            rows = np.asarray(features, dtype=np.float32)
        answer = await asyncio.to_thread(self.score, rows)
        return {**answer, "model": served(self.ref).model_dump()}
