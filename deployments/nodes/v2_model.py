"""The `v2_model` node kind: a model on any server that speaks the Open
Inference Protocol (KServe v2: Triton, MLServer, KServe's model servers),
through `tritonclient`'s asyncio clients (gRPC by default, HTTP selectable).
`triton_model` is the same kind with `server: triton` (the configs that
named it keep working).

    ranker:
      kind: triton_model
      config: {url: 127.0.0.1:8101, model: ranker, alias: champion}
      inputs: {features: features}
    ranker_sklearn:
      kind: v2_model
      config: {server: mlserver, url: 127.0.0.1:8111, model: ranker_sklearn, output_name: predict_proba, output_column: 1}
      inputs: {features: features}

The model version is resolved from an MLflow alias at start-up and, with
`alias_poll_s`, again every so often: moving the alias in the registry rolls
the running graph to the new version without a redeploy, once the server
serves it (a version the server lacks is refused, loudly, and the old one
keeps serving). The calls are the protocol's own (model ready, infer with
the version); only `server: triton` is also asked its model config (the
rows a batch may hold). `server` names the backend in errors and metrics. One client (one channel / connection pool) is reused for every
call; every call is bounded by a timeout.

inputs: `features` (a feature lookup's output, its columns taken in the
order the version recorded, or a matrix). Output: {scores, model}."""
from __future__ import annotations

import asyncio
import logging
from typing import Any, ClassVar, Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from deployments.alias_follower import AliasFollower, NotAdopted, short_reason
from deployments.errors import BackendTimeout, BackendUnavailable, public_reason
from deployments.local_supervision import supervisor_note
from deployments.nodes.base import Node, NodeSpec
from deployments.nodes.batching import Batcher, Failed
from deployments.nodes.feature_lookup import FeatureFrame
from deployments.registry import ModelRef, resolve_alias, served

logger = logging.getLogger(__name__)


class V2ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    server: str = Field("triton", pattern=r"^[a-z][a-z0-9_-]*$",
                        description="Which v2 server (triton, mlserver, ...): names the backend; triton is also asked its model config.")
    url: str = Field("127.0.0.1:8101", description="host:port of the server's gRPC (or HTTP) endpoint.")
    protocol: Literal["grpc", "http"] = "grpc"
    model: str = Field("ranker", min_length=1, description="Registered model name, also the name the server serves it by.")
    alias: str = Field("champion", min_length=1, description="MLflow alias that selects the version.")
    registry_uri: str = Field("sqlite:///.local/mlflow/mlflow.db", description="MLflow registry URI.")
    input_name: str = "features"
    output_name: str = "score"
    output_column: Optional[int] = Field(
        None, ge=0, description="Of a 2-D output (a classifier's predict_proba: one column per class), the column that is the score."
    )
    timeout_s: float = Field(1.0, gt=0, le=60, description="Bound on one inference call.")
    reconnect_backoff_max_ms: int = Field(
        1000, ge=100, description="gRPC reconnect backoff cap: how soon a restarted server is used again."
    )
    alias_poll_s: Optional[float] = Field(
        None, gt=0, description="Re-resolve the alias this often (a registry-driven rollout); once at start when absent."
    )


class V2Model:
    def __init__(self, config: V2ModelConfig):
        self.config = config
        self.backend = config.server
        self.alias = AliasFollower(config.registry_uri, config.model, config.alias, config.alias_poll_s,
                                   resolve_alias(config.registry_uri, config.model, config.alias),
                                   ref_of=lambda ref: ref, adopt=self._adopt)
        self._client = None

    @property
    def ref(self) -> ModelRef:
        return self.alias.ref

    def current(self) -> ModelRef:
        """The version to use for one request: read once per request, so a
        rollout between two of its steps cannot mix versions."""
        return self.alias.current()

    async def _adopt(self, new: ModelRef) -> ModelRef:
        """A moved alias's version, once the server serves it."""
        try:
            ready = await asyncio.wait_for(self.client.is_model_ready(self.config.model, new.version), self.config.timeout_s)
        except Exception as error:
            ready, reason = False, short_reason(error)
        else:
            reason = "not ready"
        if not ready:
            raise NotAdopted(f"{self.backend} at {self.config.url} does not serve ({reason})")
        return new

    @property
    def client(self):
        """Created on first use, inside the replica's running event loop."""
        if self._client is None:
            if self.config.protocol == "grpc":
                from tritonclient.grpc import aio as triton

                self._client = triton.InferenceServerClient(url=self.config.url, channel_args=self._channel_args())
            else:
                from tritonclient.http import aio as triton

                self._client = triton.InferenceServerClient(url=self.config.url, conn_timeout=self.config.timeout_s)
        return self._client

    def _channel_args(self) -> list[tuple[str, int]]:
        """Reconnect soon after Triton comes back (first retry after 100 ms,
        at most `reconnect_backoff_max_ms` apart). Not
        `grpc.min_reconnect_backoff_ms`: gRPC also uses it as the connect
        timeout, and at 100 ms a new replica's first call on a loaded node
        failed with "connection attempt timed out before receiving SETTINGS
        frame". The default (20 s) leaves the bound to the call's own timeout."""
        unlimited = 2**31 - 1
        return [
            ("grpc.max_send_message_length", unlimited),
            ("grpc.max_receive_message_length", unlimited),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", self.config.reconnect_backoff_max_ms),
        ]

    def _module(self):
        if self.config.protocol == "grpc":
            import tritonclient.grpc as triton
        else:
            import tritonclient.http as triton
        return triton

    def max_batch_size(self) -> Optional[int]:
        """Rows the model takes per execution (its config.pbtxt), asked of
        Triton now; None when Triton does not answer (its readiness says so),
        and for other servers (the protocol has no such call)."""
        if self.config.server != "triton":
            return None
        try:
            if self.config.protocol == "grpc":
                import tritonclient.grpc as triton

                client = triton.InferenceServerClient(url=self.config.url)
                config = client.get_model_config(self.config.model, self.ref.version, as_json=True,
                                                 client_timeout=self.config.timeout_s)["config"]
            else:
                import tritonclient.http as triton

                client = triton.InferenceServerClient(url=self.config.url, connection_timeout=self.config.timeout_s)
                config = client.get_model_config(self.config.model, self.ref.version)
            client.close()
        except Exception as error:
            logger.warning("could not read %s's max_batch_size from Triton at %s: %s", self.config.model, self.config.url, error)
            return None
        return int(config.get("max_batch_size", 0)) or None

    async def infer(self, batch: np.ndarray, ref: Optional[ModelRef] = None) -> np.ndarray:
        """Scores of `batch` from version `ref` (default: the current one)."""
        ref = ref or self.current()
        triton = self._module()
        inputs = triton.InferInput(self.config.input_name, list(batch.shape), "FP32")
        inputs.set_data_from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        outputs = [triton.InferRequestedOutput(self.config.output_name)]
        kwargs = {"client_timeout": self.config.timeout_s} if self.config.protocol == "grpc" else {}
        try:
            result = await asyncio.wait_for(
                self.client.infer(self.config.model, [inputs], model_version=ref.version, outputs=outputs, **kwargs),
                self.config.timeout_s,
            )
        except asyncio.TimeoutError:
            raise BackendTimeout(self.backend, self.config.timeout_s) from None
        except Exception as error:
            if "DEADLINE_EXCEEDED" in str(error) or "Deadline Exceeded" in str(error):
                raise BackendTimeout(self.backend, self.config.timeout_s) from None
            raise BackendUnavailable(self.backend, public_reason(error, f"{self.backend} at {self.config.url}")) from error
        scores = result.as_numpy(self.config.output_name)
        if self.config.output_column is not None:
            scores = scores.reshape(len(batch), -1)[:, self.config.output_column]
        return scores.reshape(len(batch))

    async def ready(self) -> tuple[bool, str]:
        ref = self.current()
        try:
            ok = await asyncio.wait_for(self.client.is_model_ready(self.config.model, ref.version), self.config.timeout_s)
        except Exception as error:
            detail = f"{self.config.url}: {short_reason(error) or type(error).__name__}"
            note = supervisor_note(self.config.url)
            return False, f"{detail}; {note}" if note else detail
        detail = f"{ref.name} version {ref.version} (@{ref.alias})"
        if self.alias.problem:
            detail += f"; rollout held: {self.alias.problem}"
        return bool(ok), detail if ok else f"{detail} not ready on {self.config.url}"

    async def close(self) -> None:
        self.alias.close()
        if self._client is not None:
            await self._client.close()
            self._client = None


class V2ModelNode(NodeSpec):
    """A model on a v2 server, its version from an MLflow alias (module docstring)."""

    kind: Literal["v2_model"]
    config: V2ModelConfig
    required_inputs: ClassVar[frozenset[str]] = frozenset({"features"})
    batches: ClassVar[bool] = True
    default_num_cpus: ClassVar[float] = 0.25  # waits on the server

    def build(self, name: str, companion: Any = None) -> Node:
        return V2Runner(name, self)


class TritonModelNode(V2ModelNode):
    """`v2_model` on Triton, by its older name."""

    kind: Literal["triton_model"]  # type: ignore[assignment]

    @model_validator(mode="after")
    def _on_triton(self):
        if self.config.server != "triton":
            raise ValueError(f"config.server {self.config.server!r}: a triton_model is on Triton; use kind v2_model for other servers")
        return self


class V2Runner(Node):
    records_scores = True

    def __init__(self, name: str, spec: V2ModelNode):
        self.model = V2Model(spec.config)
        self.score = self._score_one
        if spec.batch is not None:
            self.max_rows = spec.batch.max_batch_size
            model_max = self.model.max_batch_size()
            if model_max is not None and self.max_rows > model_max:
                raise ValueError(
                    f"graph.nodes.{name}.batch.max_batch_size: {self.max_rows} rows, but {spec.config.model} "
                    f"on Triton takes at most {model_max} (max_batch_size in its config.pbtxt)"
                )
            timeout_s = spec.config.timeout_s
            self.score = Batcher(name, spec.batch, self._score_many, rows=lambda item: len(item[1]), timeout_s=timeout_s,
                                 on_timeout=lambda: BackendTimeout(self.model.backend, timeout_s))

    def fields(self) -> set[str]:
        return {"scores", "model"}

    async def run(self, inputs: dict[str, Any]) -> dict[str, Any]:
        features = inputs["features"]
        ref = self.model.current()
        if isinstance(features, FeatureFrame):
            missing = sorted(set(ref.input_features) - set(features.values))
            if not ref.input_features or missing:
                raise ValueError(f"{ref.name} v{ref.version} needs features {missing or '(none recorded)'} that the input lacks")
            batch = features.matrix(ref.input_features)
        else:
            batch = np.asarray(features, dtype=np.float32)
        scores = await self.score((ref, batch))
        return {"scores": [float(s) for s in scores], "model": served(ref).model_dump()}

    async def _score_one(self, item: tuple[ModelRef, np.ndarray]) -> np.ndarray:
        ref, rows = item
        return await self.model.infer(rows, ref)

    async def _score_many(self, items: list[tuple[ModelRef, np.ndarray]]) -> list[Any]:
        """One call per model version for the rows of several requests (in
        calls of at most `max_batch_size` rows), split back per request. When
        a call of several requests fails other than by timing out, each is
        tried alone, so a request the server refuses fails alone."""
        results: list[Any] = [None] * len(items)
        by_version: dict[str, list[int]] = {}
        for position, (ref, _) in enumerate(items):
            by_version.setdefault(ref.version, []).append(position)
        for positions in by_version.values():
            ref = items[positions[0]][0]
            try:
                rows = np.concatenate([items[p][1] for p in positions])
                scores = np.concatenate([await self.model.infer(rows[start:start + self.max_rows], ref)
                                         for start in range(0, len(rows), self.max_rows)])
            except BackendTimeout as error:
                for p in positions:
                    results[p] = Failed(error)
                continue
            except Exception as error:
                if len(positions) == 1:
                    results[positions[0]] = Failed(error)
                    continue
                for p in positions:
                    try:
                        results[p] = await self.model.infer(items[p][1], ref)
                    except Exception as alone:
                        results[p] = Failed(alone)
                continue
            start = 0
            for p in positions:
                count = len(items[p][1])
                results[p] = scores[start:start + count]
                start += count
        return results

    async def ready(self) -> tuple[bool, str]:
        return await self.model.ready()

    async def close(self) -> None:
        await self.model.close()
