"""The `torch_model` node kind: a PyTorch model run inside the replica (the seed architecture's CPU-only
TorchServe role), loaded from the MLflow registry by alias.

`models:/<name>@<alias>` is resolved through the registry given in the
config (never MLflow's process-wide default URI), the version's artifacts are
downloaded and loaded with `mlflow.pytorch.load_model`. The version's
`input_features` tag gives the input column order, as for the Triton node.
With `alias_poll_s` the alias is read again every so often, as the Triton
node does: a moved alias's version is downloaded and loaded beside the one
serving (in a thread: requests go on), then swapped in at once. Each request
takes the version once, so none mixes two, and a version that fails to load
is refused loudly while the old one keeps serving.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from deployments.alias_follower import AliasFollower
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
    alias_poll_s: Optional[float] = Field(
        None, gt=0, description="Re-resolve the alias this often and load its new version live; once at start when absent."
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


@dataclass(frozen=True)
class LoadedVersion:
    """One registered version, loaded: what a request scores with, start to end."""

    ref: ModelRef
    module: Any
    input_features: Optional[list[str]]


class TorchModel(Node):
    backend = "torch"
    records_scores = True

    def __init__(self, config: TorchModelConfig, name: str = "torch_model", batch: Optional[BatchConfig] = None):
        import torch

        self.config = config
        self.device = torch.device(config.device)
        self.alias = AliasFollower(config.registry_uri, config.model, config.alias, config.alias_poll_s,
                                   self.load(resolve_alias(config.registry_uri, config.model, config.alias)),
                                   ref_of=lambda loaded: loaded.ref, adopt=lambda ref: asyncio.to_thread(self.load, ref))
        self.score = self._score_one if batch is None else Batcher(name, batch, self._score_many, rows=lambda item: len(item[1]))

    @property
    def ref(self) -> ModelRef:
        return self.alias.ref

    @property
    def input_features(self) -> Optional[list[str]]:
        return self.alias.serving.input_features

    def load(self, ref: ModelRef) -> LoadedVersion:
        """Download and load `ref`'s version (blocking: the poller runs it in a thread)."""
        import mlflow.pytorch

        path = download_version(self.config.registry_uri, self.config.model, ref.version)
        found = flavors(path)
        if "pytorch" not in found:
            raise NotATorchModel(
                f"{self.config.model} version {ref.version} (@{self.config.alias}) has no pytorch flavor "
                f"(flavors: {', '.join(found)}): log it with mlflow.pytorch.log_model"
            )
        module = _inference_module(mlflow.pytorch.load_model(str(path), map_location=self.device))
        return LoadedVersion(ref, module, self.config.input_features or ref.input_features)

    def current(self) -> LoadedVersion:
        """The version for one request, taken once (the poller starts on the first)."""
        return self.alias.current()

    def matrix(self, loaded: LoadedVersion, features: Any) -> np.ndarray:
        if isinstance(features, FeatureFrame):
            if not loaded.input_features:
                raise ValueError(f"{self.config.model} v{loaded.ref.version}: no input_features recorded or configured")
            return features.matrix(loaded.input_features)
        return np.asarray(features, dtype=np.float32)

    def infer(self, batch: np.ndarray, loaded: Optional[LoadedVersion] = None) -> np.ndarray:
        import torch

        module = (loaded or self.alias.serving).module
        with torch.inference_mode():
            out = module(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device))
        return out.reshape(len(batch)).cpu().numpy()

    def fields(self) -> set[str]:
        return {"scores", "model"}

    async def run(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """{"features": a FeatureFrame or a matrix} -> {"scores": [...], "model": name/version/alias}."""
        loaded = self.current()
        scores = await self.score((loaded, self.matrix(loaded, inputs["features"])))
        return {"scores": scores.tolist(), "model": served(loaded.ref).model_dump()}

    async def ready(self) -> tuple[bool, str]:
        """Ready once loaded (there is no backend to lose); the detail names the version and any refused one."""
        detail = f"{self.ref.name} v{self.ref.version} (@{self.config.alias}) loaded"
        return True, detail if self.alias.problem is None else f"{detail}; {self.alias.problem}"

    async def close(self) -> None:
        self.alias.close()

    async def _score_one(self, item: tuple[LoadedVersion, np.ndarray]) -> np.ndarray:
        loaded, rows = item
        return await asyncio.to_thread(self.infer, rows, loaded)

    async def _score_many(self, items: list[tuple[LoadedVersion, np.ndarray]]) -> list[Any]:
        """One forward pass per version of the requests' rows, split back
        (a batch that spans a swap keeps each request on its own version);
        when a pass fails, each of its requests alone, so that a request the
        model refuses fails by itself."""
        results: list[Any] = [None] * len(items)
        by_version: dict[str, list[int]] = {}
        for position, (loaded, _) in enumerate(items):
            by_version.setdefault(loaded.ref.version, []).append(position)
        for positions in by_version.values():
            loaded = items[positions[0]][0]
            try:
                scores = await asyncio.to_thread(self.infer, np.concatenate([items[p][1] for p in positions]), loaded)
            except Exception:
                for p in positions:
                    results[p] = await self._alone(items[p])
                continue
            ends = np.cumsum([len(items[p][1]) for p in positions])
            for p, part in zip(positions, np.split(scores, ends[:-1])):
                results[p] = part
        return results

    async def _alone(self, item: tuple[LoadedVersion, np.ndarray]) -> Any:
        try:
            return await self._score_one(item)
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
