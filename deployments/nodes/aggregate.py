"""The `aggregate` node kind: turn model outputs into the answer.

- `op: top_k`: inputs items, scores, k (and optional features: the rows'
  feature values for `best`) -> {items: [{item_id, score}], best: the top
  item with its features};
- `op: mean_scores`: inputs outputs (a list of model outputs) -> {scores,
  models} (an ensemble: the mean of the members' scores).
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal, Optional, Sequence

import numpy as np
from pydantic import Field

from deployments.nodes.base import Node, NodeSpec, Strict
from deployments.nodes.feature_lookup import FeatureFrame


class AggregateConfig(Strict):
    op: Literal["top_k", "mean_scores"] = Field(
        description=(
            "top_k: inputs items, scores, k (and optional features: the rows' feature values for `best`) -> "
            "{items: [{item_id, score}], best: the top item with its features}. "
            "mean_scores: inputs outputs (a list of model outputs) -> {scores, models} (an ensemble)."
        )
    )


# op -> (inputs it needs, inputs it may take besides)
INPUTS = {"top_k": ({"items", "scores", "k"}, {"features"}), "mean_scores": ({"outputs"}, set())}


class AggregateNode(NodeSpec):
    kind: Literal["aggregate"]
    config: AggregateConfig

    def inputs_taken(self) -> tuple[set[str], Optional[set[str]]]:
        required, optional = INPUTS[self.config.op]
        return set(required), set(optional)

    def build(self, name: str, companion: Any = None) -> Node:
        return AggregateRunner(self.config.op)


class AggregateRunner(Node):
    def __init__(self, op: str):
        self.op = op

    def fields(self) -> set[str]:
        return {"items", "best"} if self.op == "top_k" else {"scores", "models"}

    async def run(self, inputs: dict[str, Any]) -> dict[str, Any]:
        if self.op == "top_k":
            return ranked(inputs["items"], inputs["scores"], inputs["k"], inputs.get("features"))
        return mean_scores(inputs["outputs"])


def top_k(item_ids: Sequence[Any], scores: np.ndarray, k: int) -> list[tuple[Any, float]]:
    """The k best items by score, ties kept in request order (stable)."""
    if len(item_ids) != len(scores):
        raise ValueError(f"{len(item_ids)} items but {len(scores)} scores")
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")[:k]
    return [(item_ids[i], float(scores[i])) for i in order]


def ranked(items: list, scores: list[float], k: int, features: FeatureFrame | None) -> dict[str, Any]:
    """{items: [{item_id, score, feature_timestamps}], best: the top item plus
    its row's features (for a prompt)}. With `features`, each item says when
    the features it was scored on were written (per feature view, UTC ISO 8601):
    a stale item is visible in the answer."""
    best_first = top_k(items, np.asarray(scores, dtype=np.float64), k)
    row = {item: index for index, item in enumerate(items)}
    answer = [{"item_id": item, "score": score} for item, score in best_first]
    if features is not None:
        views = sorted({name.split("__", 1)[0] for name in features.timestamps})
        for entry in answer:
            entry["feature_timestamps"] = {view: _utc(features.view_timestamp(view, row[entry["item_id"]])) for view in views}
    best = {key: value for key, value in answer[0].items() if key != "feature_timestamps"} if answer else None
    if best is not None and features is not None:
        best.update({name: column[row[best["item_id"]]] for name, column in features.values.items()})
    return {"items": answer, "best": best}


def _utc(epoch_s: int) -> str:
    return datetime.fromtimestamp(epoch_s, tz=timezone.utc).isoformat()


def mean_scores(outputs: list[dict[str, Any] | None]) -> dict[str, Any]:
    """Ensemble: the mean of the members' scores (a failed soft member is left out)."""
    present = [o for o in outputs if o is not None]
    if not present:
        raise ValueError("no ensemble member answered")
    lengths = {len(o["scores"]) for o in present}
    if len(lengths) != 1:
        raise ValueError(f"ensemble members scored different numbers of items {sorted(lengths)}")
    mean = np.mean([o["scores"] for o in present], axis=0)
    return {"scores": [float(s) for s in mean], "models": [o.get("model") for o in present]}
