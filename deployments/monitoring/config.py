"""The `drift:` of a graph app, typed and checked where the config is read.

    args:
      payload_log: {nodes: [features, ranker], ...}   # drift reads the logged requests
      drift:
        features_node: features        # a feature_lookup node in payload_log.nodes
        model_node: ranker             # a model node: its version's reference sample, and its scores
        window: 300                    # requests per window (one row each)
        check_every_s: 10
        drift_share: 0.5               # the share of drifted columns that sets the flag (Evidently's default)
        method: ks                     # Evidently's test for every column (default: its choice per column)
"""
from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field

MODEL_KINDS = ("triton_model", "v2_model", "torch_model")


class DriftConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    features_node: str = Field(min_length=1, description="A feature_lookup node whose output the payload log keeps.")
    model_node: str = Field(min_length=1, description="The model node whose version's reference sample is compared with, "
                            "and whose scores are watched too (prediction drift).")
    reference_artifact: str = Field("reference/features.parquet", min_length=1,
                                    description="The artifact, in the run of the model's version, with the training features.")
    window: int = Field(300, ge=30, le=100_000, description="Requests per window: the latest this many, one row each.")
    check_every_s: float = Field(10.0, ge=0.5, le=3600, description="How often the window is compared with the reference.")
    check_timeout_s: float = Field(60.0, gt=0, le=3600, description="A check that takes longer is given up and counted "
                                   "(outcome timeout); none starts while it still runs (outcome skipped).")
    drift_share: float = Field(0.5, gt=0, le=1, description="Share of drifted columns from which the window counts as drifted.")
    method: Optional[str] = Field(None, min_length=1, description="Evidently's per-column test for every column (ks, "
                                  "wasserstein, psi, ...); default: Evidently's choice by column type and size.")
    send_every_s: float = Field(2.0, ge=0.1, le=60, description="How often each replica sends its rows to the monitor.")

    def problems(self, nodes: dict[str, Any], logged_nodes: set[str] | None) -> list[tuple[str, str]]:
        """(path under drift, reason): what the graph and its payload log do not provide."""
        found = []
        if logged_nodes is None:
            found.append(("", "needs payload_log: drift reads the logged requests"))
        features = nodes.get(self.features_node)
        if features is None or features.kind != "feature_lookup":
            found.append(("features_node", f"{self.features_node!r} is not a feature_lookup node of the graph"))
        elif logged_nodes is not None and self.features_node not in logged_nodes:
            found.append(("features_node", f"{self.features_node!r} is not in payload_log.nodes"))
        model = nodes.get(self.model_node)
        if model is None or model.kind not in MODEL_KINDS:
            found.append(("model_node", f"{self.model_node!r} is not a model node ({', '.join(MODEL_KINDS)}) of the graph"))
        elif logged_nodes is not None and self.model_node not in logged_nodes:
            found.append(("model_node", f"{self.model_node!r} is not in payload_log.nodes"))
        return found
