"""The `torch_model` node kind: a PyTorch model run inside the replica (the seed architecture's CPU-only
TorchServe role), loaded from the MLflow registry by alias.

`models:/<name>@<alias>` is resolved through the registry given in the
config (never MLflow's process-wide default URI), the version's artifacts are
downloaded and loaded with `mlflow.pytorch.load_model`. The version's
`input_features` tag gives the input column order, as for the Triton node.
A registered version without a `pytorch` flavor (an ONNX-only export, like
the local stack's `ranker`) fails at load with that reason.

inputs and output as for `triton_model`: `features` -> {scores, model}.
`device: cuda` needs a GPU, so only a node placed apart can ask for it.

The forward pass runs in a worker thread (torch releases the GIL in its
kernels), so the replica's event loop keeps serving while it runs; with
`batch:`, the requests that arrive meanwhile go as one forward pass of all
their rows, split back per request. A request whose rows the model refuses
(a wrong number of features) fails alone.
"""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from deployments.nodes.base import Node, NodeSpec
from deployments.nodes.batching import BatchConfig, Batcher, Failed
from deployments.nodes.feature_lookup import FeatureFrame
from deployments.registry import ModelRef, download_version, resolve_alias, served


class TorchModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, description="Registered MLflow model name (a version logged with mlflow.pytorch).")
    alias: str = Field("champion", min_length=1, description="MLflow alias that selects the version.")
    registry_uri: str = Field("sqlite:///.local/mlflow/mlflow.db", description="MLflow registry URI.")
    device: Literal["cpu", "cuda"] = Field("cpu", description="cuda needs a GPU: only with placement: deployment.")
    input_features: Optional[list[str]] = Field(
        None, description="Input column order; default: the version's `input_features` tag."
    )


class NotATorchModel(ValueError):
    pass


def flavors(model_dir: Path) -> list[str]:
    import yaml

    with open(model_dir / "MLmodel") as handle:
        return sorted((yaml.safe_load(handle) or {}).get("flavors", {}))


def _inference_module(loaded: Any) -> Any:
    """A callable in inference mode. MLflow 3 logs models through torch.export:
    the loaded module is then an exported graph, whose eval() raises (it was
    traced as it is: nothing to switch)."""
    try:
        return loaded.eval()
    except NotImplementedError:
        return loaded


class TorchModel(Node):
    backend = "torch"
    records_scores = True

    def __init__(self, config: TorchModelConfig, name: str = "torch_model", batch: Optional[BatchConfig] = None):
        import mlflow.pytorch
        import torch

        self.config = config
        self.ref: ModelRef = resolve_alias(config.registry_uri, config.model, config.alias)
        path = download_version(config.registry_uri, config.model, self.ref.version)
        found = flavors(path)
        if "pytorch" not in found:
            raise NotATorchModel(
                f"{config.model} version {self.ref.version} (@{config.alias}) has no pytorch flavor "
                f"(flavors: {', '.join(found)}): log it with mlflow.pytorch.log_model"
            )
        self.input_features = config.input_features or self.ref.input_features
        self.device = torch.device(config.device)
        self.module = _inference_module(mlflow.pytorch.load_model(str(path), map_location=self.device))
        self.score = self._score_one if batch is None else Batcher(name, batch, self._score_many, rows=len)

    def matrix(self, features: Any) -> np.ndarray:
        if isinstance(features, FeatureFrame):
            if not self.input_features:
                raise ValueError(f"{self.config.model} v{self.ref.version}: no input_features recorded or configured")
            return features.matrix(self.input_features)
        return np.asarray(features, dtype=np.float32)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.module(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device))
        return out.reshape(len(batch)).cpu().numpy()

    def fields(self) -> set[str]:
        return {"scores", "model"}

    async def run(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """{"features": a FeatureFrame or a matrix} -> {"scores": [...], "model": name/version/alias}."""
        scores = await self.score(self.matrix(inputs["features"]))
        return {"scores": scores.tolist(), "model": served(self.ref).model_dump()}

    async def _score_one(self, rows: np.ndarray) -> np.ndarray:
        return await asyncio.to_thread(self.infer, rows)

    async def _score_many(self, matrices: list[np.ndarray]) -> list[Any]:
        """One forward pass of every request's rows, split back; when it
        fails, each request alone, so that a request the model refuses fails
        by itself."""
        try:
            scores = await asyncio.to_thread(self.infer, np.concatenate(matrices))
        except Exception:
            return [await self._alone(rows) for rows in matrices]
        ends = np.cumsum([len(rows) for rows in matrices])
        return np.split(scores, ends[:-1])

    async def _alone(self, rows: np.ndarray) -> Any:
        try:
            return await self._score_one(rows)
        except Exception as error:
            return Failed(error)


class TorchModelNode(NodeSpec):
    """A PyTorch model from MLflow run in the replica (module docstring)."""

    kind: Literal["torch_model"]
    config: TorchModelConfig
    required_inputs: ClassVar[frozenset[str]] = frozenset({"features"})
    batches: ClassVar[bool] = True

    @model_validator(mode="after")
    def _cuda_needs_its_own_deployment(self):
        if self.config.device == "cuda" and self.placement == "inline":
            raise ValueError(
                "config.device cuda: an inline node runs in the calling replica, which has no GPU; "
                "use placement: deployment with ray_actor_options.num_gpus"
            )
        return self

    def build(self, name: str, companion: Any = None) -> Node:
        return TorchModel(self.config, name, self.batch)
